"""``WidthPruning``: attention heads and MLP neurons removed together, ranked on one scale
across every layer (FLAP's adaptive structure search)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from ..errors import ConfigError
from ..graph.dependency import DependencyGraph, Group, channel_matrix
from ..importance.fluctuation import standardised_scores
from ..selection import channels as selection
from .groups import MEASURED, GroupPruning


@dataclass
class WidthPruning(GroupPruning):
    """Remove attention heads and MLP neurons in one ranking over the whole model, as FLAP
    does (An et al. 2024, its "AL-AM" structure): every head and neuron is scored by the
    ``"fluctuation"`` criterion, each layer's scores are standardised (FLAP's
    ``standardised_scores`` in ``prunekit.importance.fluctuation``), and the lowest go,
    heads and neurons alike, until ``ratio`` of their parameters is removed, each weighing
    the parameters it takes with it (a Llama head with its query, key, value and output
    slices weighs far more than one neuron; in grouped-query attention a unit is a key/value
    head with the query heads that read it). Layers end up with different widths, and a
    layer may give up heads while keeping its neurons, as the scores say; none loses more
    than ``max_ratio`` of its heads or of its neurons.

    ``ratio`` is the share of the heads' and neurons' parameters removed; ``params_target``
    and ``flops_target`` search it for a share of the whole model. ``round_to`` rounds each
    layer's kept neurons up to a multiple (not its heads). ``bias_compensation=True`` gives
    the mean of what every removed head and neuron contributed back through the biases
    (FLAP's compensation; reads ``data=``). The criterion is FLAP's own and the only one
    standardised this way; ``data=`` is required.

    Example:
        >>> pk.prune(llama, inputs, pk.WidthPruning(params_target=0.2,
        ...                                         bias_compensation=True), data=batches)
    """

    criterion: str = "fluctuation"

    target: ClassVar[str] = "channels"
    cli_name: ClassVar[str] = "width"

    def __post_init__(self) -> None:
        super().__post_init__()
        name = type(self).__name__
        if self.criterion != "fluctuation":
            raise ConfigError(f"{name}.criterion: heads and neurons are ranked together on "
                              f"FLAP's standardised 'fluctuation' only, not "
                              f"{self.criterion!r}; rank heads and neurons apart with "
                              f"HeadPruning and FilterPruning")
        if self.overrides or self.global_ranking:
            raise ConfigError(f"{name} always ranks every layer together; it takes no "
                              f"overrides or global_ranking")
        if self.round_to == MEASURED:
            raise ConfigError(f"{name}.round_to must be a positive integer (each layer's "
                              f"kept neurons are rounded up to it), not {MEASURED!r}")

    def step(self, step, steps, removed):
        if self.budget() is None:  # its ratio is a share of parameters, not of units
            raise ConfigError("WidthPruning in steps takes params_target= or flops_target=, "
                              "not a ratio (a share of the heads' and neurons' parameters)")
        return super().step(step, steps, removed)

    def candidates(self, graph: DependencyGraph) -> list[Group]:
        heads = graph.head_groups()
        if not heads:  # nothing to rank neurons against: that is FilterPruning
            return []
        return heads + super().candidates(graph)

    def nothing_to_prune(self) -> str:
        return ("WidthPruning ranks attention heads with MLP neurons, and the model has no "
                "attention heads the engine can find; use FilterPruning for its channels")

    def score(self, graph, groups, data=None, loss_fn=None) -> dict[int, torch.Tensor]:
        if data is None:
            raise ConfigError("WidthPruning reads activations (FLAP's fluctuation); pass "
                              "data=, an iterable of calibration batches")
        heads = {g.axis for g in graph.head_groups()}
        return standardised_scores(graph, [g for g in groups if g.axis in heads],
                                   [g for g in groups if g.axis not in heads], data)

    def select(self, graph, groups, scores, ratio=None, dither=False, widths=None):
        ratio = self.ratio if ratio is None else ratio
        ranked = [g for g in groups if g.axis in scores]  # a group no layer reads stays
        heads = {g.axis for g in graph.head_groups()}
        removed = selection.lowest_by_weight(
            ranked, scores, {g.axis: unit_parameters(graph, g) for g in ranked}, ratio,
            self.max_ratio)
        keep = {}
        for group in ranked:
            n_keep = group.size - removed[group.axis]
            if group.axis not in heads:
                n_keep = self.channels_to_keep(group.size, removed[group.axis] / group.size)
            if n_keep < group.size:
                keep[group.axis] = selection.highest(scores[group.axis], n_keep)
        return keep


def unit_parameters(graph: DependencyGraph, group: Group) -> int:
    """The parameters one unit of ``group`` (a head, a neuron) takes with it: its slice of
    every parameter the group couples. (Shapes only: on the meta device, so a budget's
    search, which selects many times, copies no weights.)"""
    return sum(channel_matrix(graph.axes, m.slot.tensor.detach().to("meta"), m.dim,
                              m.segments, group.axis).shape[1]
               for m in group.members if m.slot.kind == "parameter")
