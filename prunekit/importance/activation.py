"""Data-driven criteria: statistics of each channel's activations over calibration batches.

Activations are read with forward hooks on the modules whose output carries a group's
channels (post-activation modules preferred, see ``DependencyGraph.activation_sites``); the
hooks are always removed afterwards, even when a batch fails. A group read at several places
(a residual stream is the output of every block) gets the mean of its per-place scores.
Groups whose channels are never a module's output are ranked by their weights' L1 norm.

- ``apoz``: 1 − the average percentage of zeros (Hu et al. 2016); the channels most often
  zero go first.
- ``mean_activation``: the mean absolute activation.
- ``taylor``: first-order Taylor expansion of the loss, |Σ activation × gradient| over each
  sample's positions, averaged over samples (Molchanov et al.); needs labelled batches
  ``(inputs, targets)`` (cross-entropy) or a ``loss_fn(outputs, batch)``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable

import torch

from ..core.batches import LossFn, batch_loss, split_batch
from ..core.calls import call_model, evaluating
from ..core.distributed import require_data_everywhere, sum_across
from ..errors import ConfigError
from .base import DataCriterion


def _per_channel(values: torch.Tensor, dim: int, per_sample: bool = False) -> torch.Tensor:
    """Sum over every dim but ``dim`` (and the batch dim 0 when ``per_sample``)."""
    keep = {dim % values.dim()} | ({0} if per_sample else set())
    reduce = [d for d in range(values.dim()) if d not in keep]
    return values.sum(dim=reduce) if reduce else values


@dataclass(frozen=True)
class ActivationStatistic(DataCriterion):
    """Score channels from their activations on ``data`` (see the module docstring)."""

    statistic: str  # "apoz" | "mean_activation" | "taylor"

    @property
    def reads_loss(self) -> bool:
        """Taylor's scores need a loss: labelled batches, or a ``loss_fn``."""
        return self.statistic == "taylor"

    def score_groups(self, graph, groups, data: Iterable,
                     loss_fn: LossFn | None = None) -> dict[int, torch.Tensor]:
        """``{group axis: scores}`` for the groups with an activation site."""
        model = graph.model
        sites = {g.axis: graph.activation_sites(g) for g in groups}
        by_call: dict[tuple[str, int], list[tuple[int, int]]] = {}
        for axis, places in sites.items():
            for output, dim in places:
                by_call.setdefault((output.module, output.call), []).append((axis, dim))
        totals: dict[tuple[str, int], dict[tuple[int, int], torch.Tensor]] = {
            key: {} for key in by_call}
        counts = dict.fromkeys(by_call, 0)
        captured: list[tuple[tuple[str, int], torch.Tensor]] = []
        calls: dict[str, int] = {}
        modules = dict(model.named_modules())

        def hook_for(name: str):
            def hook(_module, _args, output):
                call = calls.get(name, 0)
                calls[name] = call + 1
                if (name, call) in by_call and isinstance(output, torch.Tensor):
                    captured.append(((name, call), output))
            return hook

        handles = [modules[name].register_forward_hook(hook_for(name))
                   for name in {name for name, _ in by_call}]
        try:
            with evaluating(model):
                for batch in data:
                    calls.clear()
                    captured.clear()
                    self._accumulate(model, batch, by_call, captured, totals, counts, loss_fn)
        finally:
            for handle in handles:
                handle.remove()
            captured.clear()
        require_data_everywhere(max(counts.values(), default=0), f"criterion {self.statistic!r}")
        # on several processes: the sums of all of them (the same hooks fired on each)
        for key, places in by_call.items():
            (counts[key],) = sum_across(counts[key])
            for place in places:
                if place in totals[key]:
                    (totals[key][place],) = sum_across(totals[key][place])
        scores: dict[int, torch.Tensor] = {}
        for axis, places in sites.items():
            per_place = [totals[(o.module, o.call)][(axis, d)] / counts[(o.module, o.call)]
                         for o, d in places if counts[(o.module, o.call)]]
            if per_place:
                scores[axis] = torch.stack(per_place).mean(0)
        return scores

    def _accumulate(self, model, batch, by_call, captured, totals, counts, loss_fn) -> None:
        inputs = split_batch(batch)[0]
        if self.statistic != "taylor":
            with torch.no_grad():
                call_model(model, inputs)
            gradients = [None] * len(captured)
        else:
            with torch.enable_grad():
                outputs = call_model(model, inputs)
                loss = batch_loss(outputs, batch, loss_fn, "criterion 'taylor'")
                tensors = [t for _, t in captured]
                if not tensors:
                    return
                if not loss.requires_grad:
                    raise ConfigError("criterion 'taylor' needs a loss that depends on the "
                                      "model's parameters; none of them requires grad")
                gradients = torch.autograd.grad(loss, tensors, allow_unused=True)
        for (key, tensor), gradient in zip(captured, gradients):
            values = tensor.detach().double()
            for axis, dim in by_call[key]:
                totals[key][(axis, dim)] = totals[key].get((axis, dim), 0) + self.batch_score(
                    values, None if gradient is None else gradient.double(), dim)
            counts[key] += 1

    def batch_score(self, values: torch.Tensor, gradient: torch.Tensor | None,
                    dim: int) -> torch.Tensor:
        """One batch's score per channel (averaged over batches by the caller; streamed
        hidden-size pruning sums it the same way, site by site)."""
        positions = values.numel() / values.shape[dim]
        if self.statistic == "apoz":
            return _per_channel((values != 0).double(), dim) / positions
        if self.statistic == "mean_activation":
            return _per_channel(values.abs(), dim) / positions
        if values.dim() < 2 or dim % values.dim() == 0:
            raise ConfigError("criterion 'taylor' needs activations with a batch dim first")
        product = values * (0 if gradient is None else gradient)
        return _per_channel(product, dim, per_sample=True).abs().mean(0)
