"""Layer criteria: how much a network needs each candidate layer (higher = more important).

Each is a ``LayerCriterion`` registered by name (``pk.register_criterion(name, criterion,
scores="layers")``):
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
from typing import Any, Callable, ClassVar, Iterable

import torch
from torch import nn

from ..candidates.layers import find_layer_candidates, removal
from ..core.batches import batch_loss, split_batch
from ..core.calls import call_model, evaluating
from ..core.distributed import means_across, sum_across
from ..errors import ConfigError, PruneError
from ..surgery.apply import evaluate_applied
from ..surgery.stacks import find_block_stack
from .base import LayerContext, LayerCriterion
from .distance import (
    first_tensor,
    mean_output_distance,
    summed_distance,
    token_weights,
)
from .registry import get_criterion, register_criterion


@dataclass(frozen=True)
class SkipEffect(LayerCriterion):
    """Loss rise (``"loss"``) or accuracy drop (``"accuracy"``) when the layer is skipped."""

    measure: str = "loss"
    reads_loss: ClassVar[bool] = True  # labelled batches (a loss or an accuracy)

    def score_layers(self, model, candidates, batches, context):
        return _skip_effect(model, candidates, batches, self.measure, context.loss_fn,
                            context.stack)


@dataclass(frozen=True)
class OutputChange(LayerCriterion):
    """1 − cosine between the model's output with and without the layer (no labels)."""

    def score_layers(self, model, candidates, batches, context):
        return _output_change(model, candidates, batches, context.stack)


class _HiddenStateDistance(LayerCriterion):
    """How far the hidden states move across a block (``window`` False: 1 − cosine over one
    block) or across a window of ``n`` blocks (``window`` True: the angular distance), in
    memory or streamed from the hidden states alone."""

    def score_layers(self, model, candidates, batches, context):
        return _distances(model, candidates, batches, context.stack is not None, self.window,
                          self.streamed_span(context.n))

    def streamed_span(self, n):
        return n if self.window else 1

    def span_distance(self, inputs, outputs, batch):
        return summed_distance(inputs, outputs, True, self.window,
                               token_weights(batch, outputs))


@dataclass(frozen=True)
class BlockInfluence(_HiddenStateDistance):
    """1 − cosine between a block's input and output (ShortGPT)."""


@dataclass(frozen=True)
class AngularDistance(_HiddenStateDistance):
    """Angular distance across a window of n blocks (Gromov et al. 2024)."""

    window: ClassVar[bool] = True


@dataclass(frozen=True)
class Position(LayerCriterion):
    """Later layers score lower: the usual baseline."""

    needs_data: ClassVar[bool] = False

    def score_layers(self, model, candidates, batches, context):
        return [float(len(candidates) - i) for i in range(len(candidates))]


@dataclass
class LayerScore:
    """One candidate layer: its name, score (higher = more important), parameter count and
    position in execution order."""

    name: str
    score: float
    params: int
    position: int


def layer_importance(model: nn.Module, data: Iterable | None = None, criterion: str = "loss",
                     example_inputs: Any = None,
                     loss_fn: Callable[[Any, Any], torch.Tensor] | None = None,
                     n: int = 1) -> list[LayerScore]:
    """Score every candidate layer (see the module docstring); the model is not changed.

    Args:
        model: the network.
        data: re-iterable batches, ``(inputs, targets)`` for ``"loss"``/``"accuracy"``.
        criterion: a registered layer criterion (``pk.criterion_names("layers")``).
        example_inputs: inputs for finding candidates; by default the first batch's inputs.
        loss_fn: ``loss_fn(outputs, batch)``; by default the model's own loss or
            cross-entropy against the targets.
        n: for ``"angular"``, the window: each block's score is the distance across it and
            the ``n − 1`` blocks after it (windows running past the end score infinity).

    Example:
        >>> for s in pk.layer_importance(model, val_batches): print(s.name, s.score)
    """
    entry = get_criterion(criterion, "layers", "layer_importance")
    batches = list(data) if data is not None else []
    if example_inputs is None:
        if not batches:
            raise ConfigError("layer_importance needs data= or example_inputs=")
        example_inputs = split_batch(batches[0])[0]
    if entry.needs_data and not batches:
        raise ConfigError(f"layer criterion {criterion!r} measures the model on data; pass data=")
    candidates = find_layer_candidates(model, example_inputs)
    modules = dict(model.named_modules())
    context = LayerContext(find_block_stack(model), loss_fn, n)
    values = entry.criterion.score_layers(model, candidates, batches, context)
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


def choose_layers(scores: list[LayerScore], n: int | None, window: bool = False) -> list[str]:
    """The ``n`` lowest-scoring layers (all, least important first, when ``n`` is None),
    never one inside another; with ``window`` (a windowed criterion such as ``"angular"``)
    the ``n`` consecutive layers that start at the lowest-scoring layer."""
    if window and n is not None:
        best = min(scores, key=lambda s: (s.score, -s.position))
        if not math.isfinite(best.score):
            raise PruneError(f"no {n} consecutive layers keep the same shape from the first's "
                             f"input to the last's output, so no distance across them is "
                             f"defined; use a smaller n or another criterion")
        window = [s.name for s in scores  # ignored layers leave a gap: no window then
                  if best.position <= s.position < best.position + n]
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
        raise ConfigError(f"LayerPruning.n is {n}, but only {len(chosen)} non-overlapping "
                          f"layers can be skipped without changing shapes "
                          f"({', '.join(s.name for s in scores[:8])}"
                          f"{' …' if len(scores) > 8 else ''}); give at most {len(chosen)}")
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
    total, count = sum_across(total, count)  # over every process's batches
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
               angular: bool, n: int) -> list[float]:
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
                    if inputs[first].shape != outputs[last].shape:
                        sums[i] = math.inf  # a layer between them changes the shape: no
                        continue  # distance across the window is defined
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
    return means_across(sums, counts)


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


register_criterion("loss", SkipEffect("loss"), scores="layers",
                   summary="loss rise when the layer is skipped (labelled data)")
register_criterion("accuracy", SkipEffect("accuracy"), scores="layers",
                   summary="accuracy drop when the layer is skipped (labelled data)")
register_criterion("output", OutputChange(), scores="layers", comparable=True,
                   summary="output change when the layer is skipped (data)")
register_criterion("influence", BlockInfluence(), scores="layers", streams=True,
                   summary="1 - cosine between a block's input and output (ShortGPT; data)")
register_criterion("block_influence", BlockInfluence(), scores="layers", streams=True,
                   summary="ShortGPT's name for 'influence'")
register_criterion("angular", AngularDistance(), scores="layers", streams=True,
                   summary="angular distance across n blocks (Gromov et al.; data)")
register_criterion("last", Position(), scores="layers", streams=True, summary="later layers go first")
