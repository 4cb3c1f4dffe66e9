"""Turn a dependency graph and a method into a plan: rank each group, keep the best."""

from __future__ import annotations

from typing import Iterable

import torch

from .errors import ConfigError
from .importance.activation import LossFn

from .graph.axes import NotRepresentable
from .graph.dependency import DependencyGraph, Group, layout_indices
from .importance import CRITERIA, ChannelView
from .methods import _ChannelMethod
from .plan import Plan


def group_views(graph: DependencyGraph, group: Group, role: str) -> list[ChannelView]:
    """The group's members with ``role`` (all parameter members if none has it)."""
    members = [m for m in group.members if m.slot.kind == "parameter"]
    chosen = [m for m in members if m.role == role] or members
    return [ChannelView(str(m), m.role, graph.channel_matrix(m, group.axis)) for m in chosen]


def group_ratio(group: Group, method: _ChannelMethod) -> float:
    modules = set(group.modules())
    overrides = [r for name, r in method.overrides.items() if name in modules]
    return max(overrides) if overrides else method.ratio


def choose_channels(graph: DependencyGraph, method: _ChannelMethod, data: Iterable | None = None,
                    loss_fn: LossFn | None = None) -> dict[int, torch.Tensor]:
    """Rank every prunable group with the method's criterion: ``{group axis: kept indices}``.

    Data-driven criteria score the groups they can read activations for; the others (and
    weight criteria everywhere) are ranked from their weights.
    """
    criterion = CRITERIA[method.criterion]
    generator = torch.Generator().manual_seed(method.seed)
    from_data: dict[int, torch.Tensor] = {}
    if getattr(criterion, "needs_data", False):
        if data is None:
            raise ConfigError(f"{type(method).__name__}: criterion {method.criterion!r} reads "
                              f"activations; pass data=, an iterable of batches")
        from_data = criterion.score_groups(graph, graph.model, data, loss_fn)
        criterion = CRITERIA["l1"]
    role = getattr(criterion, "role", None) or method.scored_role
    keep: dict[int, torch.Tensor] = {}
    for group in graph.groups:
        n_keep = method.channels_to_keep(group.size, group_ratio(group, method))
        if n_keep >= group.size:
            continue
        scores = from_data.get(group.axis)
        if scores is None:
            scores = criterion.score(group_views(graph, group, role), generator)
        keep[group.axis] = scores.topk(n_keep).indices.sort().values
    return keep


def plan_from_keep(graph: DependencyGraph, keep: dict[int, torch.Tensor], method: dict) -> Plan:
    """Map kept indices per group onto every member tensor and counted attribute."""
    plan = Plan(method=method)
    for slot in graph.trace.slots:
        for dim in range(len(slot.specs)):
            segments = graph.layouts.get((id(slot), dim))
            if segments is None or not any(a in keep for segment in segments for a in segment):
                continue
            indices = layout_indices(graph.axes, segments, keep)
            plan.tensors.setdefault(slot.name, {})[dim] = indices.tolist()
            plan.shapes[slot.name] = list(slot.tensor.shape)
    for attribute in graph.attributes:
        try:
            segments = graph.axes.expand(attribute.spec)
        except NotRepresentable:
            continue
        if any(a in keep for segment in segments for a in segment):
            value = len(layout_indices(graph.axes, segments, keep))
            plan.attributes.setdefault(attribute.module, {})[attribute.attribute] = value
    for group in graph.all_groups:
        if group.axis in keep:
            plan.groups.append({"size": group.size, "kept": len(keep[group.axis]),
                                "members": [str(m) for m in group.members]})
    return plan
