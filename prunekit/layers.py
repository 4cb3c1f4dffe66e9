"""Layer pruning: find the blocks a network can skip, score them, and remove the least useful.

In a transformer the candidates are the blocks of its layer stack (the ``nn.ModuleList``
that holds most of the parameters, see ``prunekit.stacks``); removing one deletes it and
renumbers the rest. Elsewhere a candidate is a module (a residual block, or a single layer
outside any block) whose input and output have the same shape, so the network still runs
when it is replaced by an identity; the engine finds them by running the model once and
then checks each one by actually skipping it. Only the outermost such modules count, so
candidates are whole blocks rather than the layers inside them; plain containers
(``nn.Sequential`` stages) are not candidates themselves, their blocks are. Normalisation
layers and activations are not candidates: skipping them saves nothing.

Criteria (higher score = more important):
- ``"loss"``: how much the loss on ``data`` rises when the block is skipped;
- ``"accuracy"``: how much the accuracy on ``data`` falls when the block is skipped;
- ``"output"``: how far the model's output moves when the block is skipped, 1 − cosine to
  the unpruned output (per token in a transformer), no labels needed;
- ``"influence"`` (or ``"block_influence"``): 1 − cosine similarity between the block's input
  and output, averaged over ``data`` (a block that barely changes its input is redundant;
  ShortGPT's block influence);
- ``"angular"``: the angular distance arccos(cosine)/π between the input of a block and the
  output of the block ``n − 1`` later (Gromov et al. 2024); the ``n`` consecutive blocks
  whose window changes the representation least go together;
- ``"last"``: position only — later blocks score lower (the usual baseline).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, Iterable

import torch
from torch import nn

from .apply import evaluate_applied
from .batches import batch_loss, split_batch
from .distance import first_tensor, mean_output_distance, summed_distance, token_weights
from .errors import ConfigError, PruneError
from .modes import evaluating
from .plan import Plan
from .stacks import find_block_stack, stack_blocks
from .trace import call_model, iter_tensors, output_shapes

LAYER_CRITERIA = ("loss", "accuracy", "output", "influence", "block_influence", "angular", "last")
_SAME_AS = {"block_influence": "influence"}  # ShortGPT's name for it
_NOT_CANDIDATES = (nn.Sequential, nn.ModuleList, nn.ModuleDict,
                   nn.modules.batchnorm._NormBase, nn.LayerNorm, nn.GroupNorm,
                   nn.LocalResponseNorm, nn.Identity, nn.Dropout, nn.ReLU, nn.ReLU6, nn.GELU,
                   nn.SiLU, nn.Hardswish, nn.Hardsigmoid, nn.Sigmoid, nn.Tanh)


@dataclass
class LayerScore:
    """One candidate layer: its name, score (higher = more important), parameter count and
    position in execution order."""

    name: str
    score: float
    params: int
    position: int


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


def layer_importance(model: nn.Module, data: Iterable | None = None, criterion: str = "loss",
                     example_inputs: Any = None,
                     loss_fn: Callable[[Any, Any], torch.Tensor] | None = None,
                     n: int = 1) -> list[LayerScore]:
    """Score every candidate layer (see the module docstring); the model is not changed.

    Args:
        model: the network.
        data: re-iterable batches, ``(inputs, targets)`` for ``"loss"``/``"accuracy"``.
        criterion: one of ``LAYER_CRITERIA``.
        example_inputs: inputs for finding candidates; by default the first batch's inputs.
        loss_fn: ``loss_fn(outputs, batch)``; by default the model's own loss or
            cross-entropy against the targets.
        n: for ``"angular"``, the window: each block's score is the distance across it and
            the ``n − 1`` blocks after it (windows running past the end score infinity).

    Example:
        >>> for s in pk.layer_importance(model, val_batches): print(s.name, s.score)
    """
    if criterion not in LAYER_CRITERIA:
        raise ConfigError(f"layer criterion {criterion!r} is unknown; choose one of "
                          f"{list(LAYER_CRITERIA)}")
    criterion = _SAME_AS.get(criterion, criterion)
    batches = list(data) if data is not None else []
    if example_inputs is None:
        if not batches:
            raise ConfigError("layer_importance needs data= or example_inputs=")
        example_inputs = split_batch(batches[0])[0]
    if criterion != "last" and not batches:
        raise ConfigError(f"layer criterion {criterion!r} measures the model on data; pass data=")
    candidates = find_layer_candidates(model, example_inputs)
    modules = dict(model.named_modules())
    stack = find_block_stack(model)
    per_token = stack is not None  # a transformer: compare hidden states token by token
    count = len(candidates)
    if criterion == "last":
        values = [float(count - i) for i in range(count)]
    elif criterion in ("influence", "angular"):
        values = _distances(model, candidates, batches, per_token, criterion, n)
    elif criterion == "output":
        values = _output_change(model, candidates, batches, stack)
    else:
        values = _skip_effect(model, candidates, batches, criterion, loss_fn, stack)
    return [LayerScore(name, value, sum(p.numel() for p in modules[name].parameters()), i)
            for i, (name, value) in enumerate(zip(candidates, values))]


def find_redundant_layers(model: nn.Module, data: Iterable, threshold: float,
                          criterion: str = "loss", **kwargs) -> list[LayerScore]:
    """The candidate layers whose score is below ``threshold`` (for ``"loss"``: skipping them
    raises the loss by less than that), least important first.

    Example:
        >>> pk.find_redundant_layers(model, val_batches, threshold=0.01)
    """
    scores = layer_importance(model, data, criterion, **kwargs)
    return sorted((s for s in scores if s.score < threshold), key=lambda s: s.score)


def choose_layers(scores: list[LayerScore], n: int | None, criterion: str = "") -> list[str]:
    """The ``n`` lowest-scoring layers (all, least important first, when ``n`` is None),
    never one inside another; for ``"angular"`` the window of ``n`` that starts at the
    lowest-scoring layer."""
    if criterion == "angular" and n is not None:
        start = min(scores, key=lambda s: (s.score, -s.position)).position
        window = [s.name for s in scores[start:start + n]]
        if len(window) == n:
            return window
    chosen: list[str] = []
    for score in sorted(scores, key=lambda s: (s.score, -s.position)):
        if len(chosen) == n:
            break
        if any(_nested(score.name, other) for other in chosen):
            continue
        chosen.append(score.name)
    if n is not None and len(chosen) < n:
        raise PruneError(f"asked to remove {n} layers but only {len(chosen)} non-overlapping "
                         f"layers can be skipped without changing shapes "
                         f"({[s.name for s in scores]})")
    return chosen


def _nested(a: str, b: str) -> bool:
    return a == b or a.startswith(b + ".") or b.startswith(a + ".")


def _evaluate(model: nn.Module, batches: list, criterion: str, loss_fn) -> float:
    total, count = 0.0, 0
    with torch.no_grad():
        for batch in batches:
            inputs, targets = split_batch(batch)
            outputs = call_model(model, inputs)
            if criterion == "accuracy":
                if targets is None:
                    raise ConfigError("layer criterion 'accuracy' needs (inputs, targets) batches")
                total += (outputs.argmax(dim=1) == targets).sum().item()
                count += len(targets)
                continue
            loss = batch_loss(outputs, batch, loss_fn, f"layer criterion {criterion!r}")
            total, count = total + float(loss), count + 1
    return total / max(count, 1)


def _skip_effect(model: nn.Module, candidates: list[str], batches: list, criterion: str,
                 loss_fn, stack: str | None) -> list[float]:
    """Loss rise or accuracy drop when each candidate alone is skipped."""
    with evaluating(model):
        baseline = _evaluate(model, batches, criterion, loss_fn)
        effects = []
        for name in candidates:
            skipped = evaluate_applied(model, removal([name], stack), lambda m: _evaluate(
                m, batches, criterion, loss_fn))
            change = skipped - baseline
            effects.append(-change if criterion == "accuracy" else change)
        return effects


def _distances(model: nn.Module, candidates: list[str], batches: list, per_token: bool,
               criterion: str, n: int) -> list[float]:
    """Influence: 1 − cosine between each candidate's input and output. Angular: the
    angular distance between candidate i's input and candidate i + n − 1's output."""
    modules = dict(model.named_modules())
    inputs: dict[str, torch.Tensor] = {}
    outputs: dict[str, torch.Tensor] = {}

    def hook_for(name: str):
        def hook(_module, args, kwargs, output):
            inputs[name] = first_tensor((args, kwargs))
            outputs[name] = first_tensor(output)
        return hook

    angular = criterion == "angular"
    span = n if angular else 1
    sums = [0.0] * len(candidates)
    counts = [0] * len(candidates)
    handles = [modules[name].register_forward_hook(hook_for(name), with_kwargs=True)
               for name in candidates]
    try:
        with evaluating(model), torch.no_grad():
            for batch in batches:
                inputs.clear()
                outputs.clear()
                given = split_batch(batch)[0]
                call_model(model, given)
                for i in range(len(candidates) - span + 1):
                    first, last = candidates[i], candidates[i + span - 1]
                    total, samples = summed_distance(
                        inputs[first], outputs[last], per_token, angular,
                        token_weights(given, outputs[last]))
                    sums[i] += total
                    counts[i] += samples
    finally:
        for handle in handles:
            handle.remove()
        inputs.clear()
        outputs.clear()
    return [sums[i] / counts[i] if counts[i] else math.inf for i in range(len(candidates))]


def _output_change(model: nn.Module, candidates: list[str], batches: list,
                   stack: str | None) -> list[float]:
    """1 − cosine between the model's output and its output with each candidate skipped
    (per token in a transformer)."""
    per_token = stack is not None
    inputs = [split_batch(batch)[0] for batch in batches]
    with evaluating(model), torch.no_grad():
        reference = [first_tensor(call_model(model, batch)) for batch in inputs]

        def distance(skipped: nn.Module) -> float:
            return mean_output_distance(skipped, inputs, reference, per_token)

        return [evaluate_applied(model, removal([name], stack), distance)
                for name in candidates]
