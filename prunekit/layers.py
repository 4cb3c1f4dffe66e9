"""Layer pruning: find the blocks a network can skip, score them, and remove the least useful.

A candidate is a module (a residual block, or a single layer outside any block) whose input
and output have the same shape, so the network still runs when it is replaced by an
identity; the engine finds them by running the model once and then checks each one by
actually skipping it. Only the outermost such modules count, so candidates are whole blocks
rather than the layers inside them; plain containers (``nn.Sequential`` stages) are not
candidates themselves, their blocks are. Normalisation layers and activations are not
candidates: skipping them saves nothing.

Criteria (higher score = more important):
- ``"loss"``: how much the loss on ``data`` rises when the block is skipped;
- ``"accuracy"``: how much the accuracy on ``data`` falls when the block is skipped;
- ``"influence"``: 1 − cosine similarity between the block's input and output, averaged over
  ``data`` (a block that barely changes its input is redundant);
- ``"last"``: position only — later blocks score lower (the usual baseline).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Iterable

import torch
from torch import nn
from torch.nn import functional as F

from .apply import evaluate_applied
from .batches import batch_loss, split_batch
from .errors import ConfigError, PruneError
from .plan import Plan
from .trace import call_model, iter_tensors, output_shapes

LAYER_CRITERIA = ("loss", "accuracy", "influence", "last")
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
    """The outermost modules whose removal keeps every shape valid, in execution order."""
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
    training = model.training
    try:
        model.eval()
        shapes = output_shapes(model, example_inputs)
    finally:
        for handle in handles:
            handle.remove()
        model.train(training)
    candidates: list[str] = []
    for name in order:  # parents start before their children
        if any(name.startswith(outer + ".") for outer in candidates):
            continue
        if same_shape.get(name) and _skipping_keeps_shapes(model, example_inputs, name, shapes):
            candidates.append(name)
    return candidates


def _skipping_keeps_shapes(model: nn.Module, example_inputs: Any, name: str,
                           shapes: list[tuple[int, ...]]) -> bool:
    def same_shapes(skipped: nn.Module) -> bool:
        try:
            return output_shapes(skipped, example_inputs) == shapes
        except Exception:  # skipping it breaks the forward pass: not a candidate
            return False

    return evaluate_applied(model, Plan(layers=[name]), same_shapes)


def layer_importance(model: nn.Module, data: Iterable | None = None, criterion: str = "loss",
                     example_inputs: Any = None,
                     loss_fn: Callable[[Any, Any], torch.Tensor] | None = None) -> list[LayerScore]:
    """Score every candidate layer (see the module docstring); the model is not changed.

    Args:
        model: the network.
        data: re-iterable batches, ``(inputs, targets)`` for ``"loss"``/``"accuracy"``.
        criterion: one of ``"loss"``, ``"accuracy"``, ``"influence"``, ``"last"``.
        example_inputs: inputs for finding candidates; by default the first batch's inputs.
        loss_fn: ``loss_fn(outputs, batch)``; by default cross-entropy against the targets.

    Example:
        >>> for s in pk.layer_importance(model, val_batches): print(s.name, s.score)
    """
    if criterion not in LAYER_CRITERIA:
        raise ConfigError(f"layer criterion {criterion!r} is unknown; choose one of "
                          f"{list(LAYER_CRITERIA)}")
    batches = list(data) if data is not None else []
    if example_inputs is None:
        if not batches:
            raise ConfigError("layer_importance needs data= or example_inputs=")
        example_inputs = split_batch(batches[0])[0]
    if criterion != "last" and not batches:
        raise ConfigError(f"layer criterion {criterion!r} measures the model on data; pass data=")
    candidates = find_layer_candidates(model, example_inputs)
    modules = dict(model.named_modules())
    n = len(candidates)
    if criterion == "last":
        values = [float(n - i) for i in range(n)]
    elif criterion == "influence":
        values = _influence(model, candidates, batches)
    else:
        values = _skip_effect(model, candidates, batches, criterion, loss_fn)
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


def choose_layers(scores: list[LayerScore], n: int | None) -> list[str]:
    """The ``n`` lowest-scoring layers (all, least important first, when ``n`` is None),
    never one inside another."""
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
                 loss_fn) -> list[float]:
    """Loss rise or accuracy drop when each candidate alone is skipped."""
    training = model.training
    model.eval()
    try:
        baseline = _evaluate(model, batches, criterion, loss_fn)
        effects = []
        for name in candidates:
            skipped = evaluate_applied(model, Plan(layers=[name]), lambda m: _evaluate(
                m, batches, criterion, loss_fn))
            change = skipped - baseline
            effects.append(-change if criterion == "accuracy" else change)
        return effects
    finally:
        model.train(training)


def _influence(model: nn.Module, candidates: list[str], batches: list) -> list[float]:
    """1 − cosine(input, output) of each candidate, per sample, averaged."""
    modules = dict(model.named_modules())
    sums = dict.fromkeys(candidates, 0.0)
    counts = dict.fromkeys(candidates, 0)

    def hook_for(name: str):
        def hook(_module, args, output):
            x = next(iter_tensors(args)).flatten(1).double()
            y = output.flatten(1).double()
            sums[name] += (1 - F.cosine_similarity(x, y, dim=1)).sum().item()
            counts[name] += x.shape[0]
        return hook

    handles = [modules[name].register_forward_hook(hook_for(name)) for name in candidates]
    training = model.training
    model.eval()
    try:
        with torch.no_grad():
            for batch in batches:
                call_model(model, split_batch(batch)[0])
    finally:
        for handle in handles:
            handle.remove()
        model.train(training)
    return [sums[name] / max(counts[name], 1) for name in candidates]
