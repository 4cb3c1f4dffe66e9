"""The ``fluctuation`` criterion of FLAP (An et al. 2024, "Fluctuation-based Adaptive
Structured Pruning for Large Language Models"), for channels and heads.

A channel is scored where a layer reads it: how much its input there varies over the
calibration tokens, weighted by the column of weights that reads it, ``Var(x_c) · ‖W[:, c]‖²``
(FLAP's weighted input feature variance), summed over the layers reading the channel. A
channel whose input barely moves carries little beyond its mean, and that mean can be given
back through the reader's bias (``bias_compensation=True``, ``prunekit.recover.compensate``):
what removing it then costs is its fluctuation. A head scores the sum over its channels of
the output projection's input of the squared channel scores (as FLAP's code does).

Readers are the ``nn.Linear`` layers (and ungrouped ``nn.Conv2d``, each input channel's
variance over positions) among a group's consumers; a group no such layer reads is ranked
by its weights. One forward pass per batch; padded positions (``attention_mask`` 0) are left
out. FLAP then standardises the scores of each layer and ranks every layer's heads and
neurons together: ``standardised_scores`` below, which ``pk.WidthPruning`` ranks by (with
``global_ranking=True``, ``FilterPruning`` and ``HeadPruning`` divide each group's scores by
their mean instead).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Iterable

import torch
from torch import nn

from ..core.batches import LossFn, split_batch
from ..core.calls import call_model, evaluating
from ..core.distributed import require_data_everywhere, sum_across
from ..graph.dependency import channel_matrix
from .base import DataCriterion
from .distance import token_weights
from .heads import _projection_input


@dataclass(frozen=True)
class ChannelFluctuation(DataCriterion):
    """FLAP's weighted input variance of each channel at the layers reading it."""

    skips_padding: ClassVar[bool] = True

    def score_groups(self, graph, groups, data: Iterable,
                     loss_fn: LossFn | None = None) -> dict[int, torch.Tensor]:
        modules = dict(graph.model.named_modules())
        readers = {g.axis: found for g in groups if (found := _readers(graph, g, modules))}
        variances = _input_variances(graph, modules, _names(readers, {}), data)
        return _neuron_scores(modules, variances, readers)


@dataclass(frozen=True)
class HeadFluctuation(DataCriterion):
    """FLAP's weighted input variance, squared and summed over each head's channels of the
    output projection's input."""

    skips_padding: ClassVar[bool] = True

    def score_groups(self, graph, groups, data: Iterable,
                     loss_fn: LossFn | None = None) -> dict[int, torch.Tensor]:
        modules = dict(graph.model.named_modules())
        sites = {g.axis: site for g in groups if (site := _projection_input(graph, g))}
        variances = _input_variances(graph, modules, _names({}, sites), data)
        return {axis: channels[heads_of].sum(1) for axis, (channels, heads_of)
                in _head_channels(modules, variances, groups, sites).items()}


def standardised_scores(graph, heads: list, neurons: list, data: Iterable
                        ) -> dict[int, torch.Tensor]:
    """FLAP's scores for ranking heads and neurons of every layer on one scale (its adaptive
    structure search, "AL-AM" in its code): the channel scores of each layer's input are
    standardised (minus their mean, over their standard deviation, across that input's
    channels), a head's channels squared first; a head scores the mean of its channels'
    standardised scores, a neuron its own. ``heads`` and ``neurons`` are head groups and
    channel groups; a group no linear layer reads is left out. One pass over ``data``."""
    modules = dict(graph.model.named_modules())
    sites = {g.axis: site for g in heads if (site := _projection_input(graph, g))}
    readers = {g.axis: found for g in neurons if (found := _readers(graph, g, modules))}
    variances = _input_variances(graph, modules, _names(readers, sites), data)
    # standardised over the whole input, then averaged per head
    scores = {axis: _standardised(channels)[heads_of].mean(1) for axis, (channels, heads_of)
              in _head_channels(modules, variances, heads, sites).items()}
    scores.update({axis: _standardised(values) for axis, values
                   in _neuron_scores(modules, variances, readers).items()})
    return scores


def _names(readers: dict, sites: dict) -> set[str]:
    """The layers whose inputs the neurons' readers and the heads' sites need."""
    return {name for found in readers.values() for name, _ in found} | {
        name for name, _ in sites.values()}


def _input_variances(graph, modules: dict[str, nn.Module], names: set[str],
                     data: Iterable) -> dict[str, torch.Tensor]:
    """Each named layer's per-input-channel variance over ``data`` (layers never called are
    left out)."""
    return {name: variance for name, (_, variance)
            in input_moments(graph.model, {n: modules[n] for n in names}, data).items()}


def _neuron_scores(modules: dict[str, nn.Module], variances: dict[str, torch.Tensor],
                   readers: dict[int, list]) -> dict[int, torch.Tensor]:
    """Each group's channel scores summed over the layers reading it (groups with a reader
    never called are left out)."""
    return {axis: sum(_weighted(modules[name], variances[name], columns)
                      for name, columns in found)
            for axis, found in readers.items()
            if all(name in variances for name, _ in found)}


def _head_channels(modules: dict[str, nn.Module], variances: dict[str, torch.Tensor],
                   groups: list, sites: dict) -> dict[int, tuple[torch.Tensor, torch.Tensor]]:
    """Per head group: the squared channel scores of its output projection's whole input,
    and the matrix of each head's channels in it."""
    found = {}
    for group in groups:
        name, heads_of = sites.get(group.axis, (None, None))
        if name in variances:
            channels = _column_scores(modules[name], variances[name], _input_dim(group, name))
            found[group.axis] = channels.square(), heads_of
    return found


def _standardised(values: torch.Tensor) -> torch.Tensor:
    # torch.std's default (n − 1), as FLAP's; equal values all score 0
    return (values - values.mean()) / values.std().clamp_min(1e-30)


def _readers(graph, group, modules: dict[str, nn.Module]) -> list[tuple[str, torch.Tensor]]:
    """``(layer name, columns)`` for each linear layer or ungrouped convolution reading the
    group's channels, ``columns[c]`` the input columns (convolutions: input channels) that
    carry channel ``c``."""
    found = []
    for member in group.members:
        if member.role != "in" or member.slot.kind != "parameter" or member.dim != 1:
            continue
        name, _, weight = member.name.rpartition(".")
        layer = modules.get(name)
        if weight != "weight" or not (isinstance(layer, nn.Linear) or (
                isinstance(layer, nn.Conv2d) and layer.groups == 1)):
            continue
        columns = channel_matrix(graph.axes, torch.arange(layer.weight.shape[1]), 0,
                                 member.segments, group.axis)
        found.append((name, columns))
    return found


def _weighted(layer: nn.Module, variance: torch.Tensor, columns: torch.Tensor) -> torch.Tensor:
    """Σ over each row of ``columns`` of ``Var(x_j) · ‖W[:, j]‖²``."""
    return _column_scores(layer, variance)[columns].sum(1)


def _column_scores(layer: nn.Module, variance: torch.Tensor, dim: int = 1) -> torch.Tensor:
    """``Var(x_j) · ‖W[:, j]‖²`` for every input column ``j`` of the layer, whose weight
    reads its input along ``dim`` (1 for ``nn.Linear``; 0 for GPT-2's ``Conv1D``)."""
    weights = layer.weight.detach().double()
    return variance * weights.square().sum(dim=[d for d in range(weights.dim()) if d != dim])


def _input_dim(group, name: str) -> int:
    """The dim along which the weight of layer ``name`` reads the group's channels."""
    return next((m.dim for m in group.members
                 if m.role == "in" and m.name == f"{name}.weight"), 1)


def input_moments(model: nn.Module, layers: dict[str, nn.Module], data: Iterable,
                  who: str = "criterion 'fluctuation'"
                  ) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Each layer's per-input-channel mean and variance over every real token (or
    position) of ``data``, in float64, summed over every process (torchrun); layers never
    called are left out."""
    moments: dict[str, list[torch.Tensor]] = {}  # name: [count, Σx, Σx²]
    inputs_now: list = [None]

    def hook_for(name: str):
        def hook(layer, args, _output):
            x = args[0]
            if not isinstance(x, torch.Tensor):
                return
            x = x.detach().double()
            if isinstance(layer, nn.Conv2d):  # channels second, every position a row
                rows, weights = x.movedim(-3, -1).reshape(-1, x.shape[-3]), None
            else:
                rows = x.reshape(-1, x.shape[-1])
                weights = token_weights(inputs_now[0], x)
            weights = (torch.ones(len(rows), dtype=rows.dtype) if weights is None
                       else weights.reshape(-1))
            parts = [weights.sum(), weights @ rows, weights @ rows.square()]
            moments[name] = parts if name not in moments else [
                m + p for m, p in zip(moments[name], parts)]
        return hook

    handles = [layer.register_forward_hook(hook_for(name)) for name, layer in layers.items()]
    batches = 0
    try:
        with evaluating(model), torch.no_grad():
            for batch in data:
                inputs_now[0] = split_batch(batch)[0]
                call_model(model, inputs_now[0])
                batches += 1
    finally:
        for handle in handles:
            handle.remove()
    require_data_everywhere(batches, who)
    found = {}
    for name in sorted(moments):  # the same order on every process
        count, total, squares = sum_across(*moments[name])
        mean = total / count.clamp_min(1)
        found[name] = mean, (squares / count.clamp_min(1) - mean.square()).clamp_min(0)
    return found
