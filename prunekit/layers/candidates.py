"""Which layers a network can lose: the candidates of layer pruning, and the plan that
removes them.

In a transformer the candidates are the blocks of its layer stack (the ``nn.ModuleList``
that holds most of the parameters, see ``prunekit.surgery.stacks``); removing one deletes it
and renumbers the rest. Elsewhere a candidate is a module (a residual block, or a single layer
outside any block) whose input and output have the same shape, so the network still runs
when it is replaced by an identity; the engine finds them by running the model once and
then checks each one by actually skipping it. Only the outermost such modules count, so
candidates are whole blocks rather than the layers inside them; plain containers
(``nn.Sequential`` stages) are not candidates themselves, their blocks are. Normalisation
layers and activations are not candidates: skipping them saves nothing.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ..calls import evaluating, iter_tensors, output_shapes
from ..plan import Plan
from ..surgery.apply import evaluate_applied
from ..surgery.stacks import find_block_stack, stack_blocks

_NOT_CANDIDATES = (nn.Sequential, nn.ModuleList, nn.ModuleDict,
                   nn.modules.batchnorm._NormBase, nn.LayerNorm, nn.GroupNorm,
                   nn.LocalResponseNorm, nn.Identity, nn.Dropout, nn.ReLU, nn.ReLU6, nn.GELU,
                   nn.SiLU, nn.Hardswish, nn.Hardsigmoid, nn.Sigmoid, nn.Tanh)


def find_layer_candidates(model: nn.Module, example_inputs: Any) -> list[str]:
    """The blocks of a transformer's stack, or else the outermost modules whose removal
    keeps every shape valid; in execution order."""
    stack = find_block_stack(model)
    if stack is not None:
        with evaluating(model):
            shapes = output_shapes(model, example_inputs)
        return [name for name in stack_blocks(model, stack)
                if _skipping_keeps_shapes(model, example_inputs, name, shapes, stack)]
    same_shape: dict[str, bool] = {}
    order: list[str] = []

    def started(name: str):
        def pre_hook(_module, _args):
            if name not in order:
                order.append(name)
        return pre_hook

    def finished(name: str):
        def hook(_module, args, output):
            tensors = list(iter_tensors(args))
            same = (isinstance(output, torch.Tensor) and len(tensors) == 1
                    and tensors[0].shape == output.shape)
            same_shape[name] = same_shape.get(name, True) and same
        return hook

    handles = []
    for name, module in model.named_modules():
        if (name and not isinstance(module, _NOT_CANDIDATES)
                and next(module.parameters(), None) is not None):
            handles.append(module.register_forward_pre_hook(started(name)))
            handles.append(module.register_forward_hook(finished(name)))
    try:
        with evaluating(model):
            shapes = output_shapes(model, example_inputs)
    finally:
        for handle in handles:
            handle.remove()
    candidates: list[str] = []
    for name in order:  # parents start before their children
        if any(name.startswith(outer + ".") for outer in candidates):
            continue
        if same_shape.get(name) and _skipping_keeps_shapes(model, example_inputs, name, shapes,
                                                            None):
            candidates.append(name)
    return candidates


def removal(names: list[str], stack: str | None) -> Plan:
    """The plan that removes these layers: deleted from the transformer's ``stack`` (from
    ``find_block_stack``) when they are its blocks, replaced by identities otherwise."""
    inside = stack is not None and any(name.rsplit(".", 1)[0] == stack for name in names)
    return Plan(layers=list(names), stacks=[stack] if inside else [])


def _skipping_keeps_shapes(model: nn.Module, example_inputs: Any, name: str,
                           shapes: list[tuple[int, ...]], stack: str | None) -> bool:
    def same_shapes(skipped: nn.Module) -> bool:
        try:
            return output_shapes(skipped, example_inputs) == shapes
        except Exception:  # skipping it breaks the forward pass: not a candidate
            return False

    return evaluate_applied(model, removal([name], stack), same_shapes)
