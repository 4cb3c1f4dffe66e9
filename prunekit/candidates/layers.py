"""Which layers a network can lose: the candidates of layer pruning, and the plan that
removes them.

In a transformer the candidates are the blocks of its layer stack (the ``nn.ModuleList``
that holds most of the parameters, see ``prunekit.surgery.stacks``); removing one deletes it
and renumbers the rest. Elsewhere a candidate is a module (a residual block, or a single layer
outside any block) whose input and output have the same shape, so the network still runs
when it is replaced by an identity; the engine finds them by running the model once and
then checks each one by actually skipping it. Candidates are blocks, never containers of
blocks: where a module holds two or more blocks of one class that keep their input's shape
(a stack: a ResNet stage, a ViT encoder's layers, a ConvNeXt stage's blocks), those blocks
are the candidates, the modules holding the stack (the stage, the encoder) never are, and
nothing inside a block is (a squeeze-and-excitation gate inside a block that changes shape).
Elsewhere the outermost modules whose removal keeps the shapes count. Normalisation layers
and activations are not candidates: skipping them saves nothing.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ..core.calls import evaluating, iter_tensors, output_shapes
from ..errors import TraceError
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
        shapes = _unpruned_shapes(model, example_inputs)
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
        shapes = _unpruned_shapes(model, example_inputs)
    finally:
        for handle in handles:
            handle.remove()
    modules = dict(model.named_modules())
    stacks = [name for name, module in modules.items() if _is_stack(module, name, same_shape)]
    blocks = _block_names(modules, stacks)
    candidates: list[str] = []
    for name in order:  # parents start before their children
        if any(name.startswith(outer + ".") for outer in candidates):
            continue
        if any(name.startswith(block + ".") for block in blocks):
            continue  # a layer inside a block of a stack: the block is the unit
        if _holds_stack(name, stacks):
            continue  # a container of blocks (a stage, an encoder): its blocks are candidates
        if same_shape.get(name) and _skipping_keeps_shapes(model, example_inputs, name, shapes,
                                                            None):
            candidates.append(name)
    return candidates


def _is_stack(module: nn.Module, prefix: str, same_shape: dict[str, bool]) -> bool:
    """Two or more direct children of one class that are blocks (modules with layers inside),
    at least one of them keeping its input's shape: repeated blocks, as in a stage or an
    encoder (the first block of a stage may change the shape, the others do not)."""
    kinds: dict[type, list[bool]] = {}
    for key, child in module.named_children():
        name = f"{prefix}.{key}" if prefix else key
        if any(next(c.parameters(), None) is not None for c in child.children()):
            kinds.setdefault(type(child), []).append(bool(same_shape.get(name)))
    return any(len(keeps) >= 2 and any(keeps) for keeps in kinds.values())


def _holds_stack(name: str, stacks: list[str]) -> bool:
    """Whether the module or anything inside it is a stack of blocks."""
    return any(stack == name or stack.startswith(name + ".") for stack in stacks)


def _block_names(modules: dict[str, nn.Module], stacks: list[str]) -> list[str]:
    """Every child of a stack that holds no stack itself: the blocks, whose insides are never
    candidates (a squeeze-and-excitation gate inside a block that changes shape, say)."""
    blocks = []
    for prefix in stacks:
        for key, _ in modules[prefix].named_children():
            name = f"{prefix}.{key}" if prefix else key
            if not _holds_stack(name, stacks):
                blocks.append(name)
    return blocks


def _unpruned_shapes(model: nn.Module, example_inputs: Any) -> list[tuple[int, ...]]:
    try:
        with evaluating(model):
            return output_shapes(model, example_inputs)
    except TraceError:
        raise
    except Exception as error:
        raise TraceError(f"the example inputs do not run through the model: "
                         f"{type(error).__name__}: {error}") from error


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
