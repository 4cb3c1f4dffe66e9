"""Turn a dependency graph and a method into a plan: rank each group, keep the best."""

from __future__ import annotations

import math
from typing import Iterable

import torch

from .batches import LossFn
from .errors import ConfigError
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


def group_ratio(group: Group, method: _ChannelMethod, ratio: float | None = None) -> float:
    modules = set(group.modules())
    overrides = [r for name, r in method.overrides.items() if name in modules]
    return max(overrides) if overrides else (method.ratio if ratio is None else ratio)


def candidate_groups(graph: DependencyGraph, method: _ChannelMethod) -> list[Group]:
    """The groups a method prunes: for head pruning the attention heads; otherwise the
    channel groups outside attention (a transformer's MLP neurons), since heads and the
    dims inside them are head pruning's."""
    if method.prunes_heads:
        return graph.head_groups()
    if method.prunes_hidden:
        return graph.hidden_groups()
    attention = {g.axis for g in graph.attention_groups()}
    return [g for g in graph.groups if g.axis not in attention]


def score_groups(graph: DependencyGraph, method: _ChannelMethod, data: Iterable | None = None,
                 loss_fn: LossFn | None = None) -> dict[int, torch.Tensor]:
    """Score every prunable group's channels with the method's criterion (higher = keep).

    Data-driven criteria score the groups they can read activations for; the others (and
    weight criteria everywhere) are scored from their weights.
    """
    # on heads, Taylor's first-order loss change is the head-mask gradient
    name = "gradient" if method.prunes_heads and method.criterion == "taylor" else method.criterion
    criterion = CRITERIA[name]
    generator = torch.Generator().manual_seed(method.seed)
    groups = candidate_groups(graph, method)
    scores: dict[int, torch.Tensor] = {}
    if getattr(criterion, "needs_data", False):
        if data is None:
            raise ConfigError(f"{type(method).__name__}: criterion {method.criterion!r} reads "
                              f"activations; pass data=, an iterable of batches")
        scores = criterion.score_groups(graph, graph.model, data, loss_fn, groups)
        criterion = CRITERIA["l1"]
    role = getattr(criterion, "role", None) or method.scored_role
    for group in groups:
        if group.axis not in scores:
            scores[group.axis] = criterion.score(group_views(graph, group, role), generator)
    return scores


def keep_from_scores(graph: DependencyGraph, method: _ChannelMethod,
                     scores: dict[int, torch.Tensor], ratio: float | None = None,
                     dither: bool = False) -> dict[int, torch.Tensor]:
    """``{group axis: kept indices}`` removing ``ratio`` (default ``method.ratio``).

    Per group, each group loses its ratio of channels; with ``dither`` the rounding error is
    carried from group to group (each group still within one channel of the ratio), so the
    total removed moves one channel at a time as the ratio grows, which lets a budget be met
    closely. With ``method.global_ranking``, scores are divided by their group's mean (so
    layers of different scale compare) and the lowest channels of the whole model go, at
    most ``method.max_ratio`` of any group.
    """
    if getattr(method, "heads", None):
        return chosen_heads(graph, method.heads)
    ratio = method.ratio if ratio is None else ratio
    groups = candidate_groups(graph, method)
    if method.global_ranking:
        ratios = _global_ratios(groups, method, scores, ratio)
    elif dither:
        ratios, carry = {}, 0.0
        for group in groups:
            exact = group.size * group_ratio(group, method, ratio) + carry
            removed = math.floor(exact + 1e-9)
            carry = exact - removed
            ratios[group.axis] = removed / group.size
    else:
        ratios = {g.axis: group_ratio(g, method, ratio) for g in groups}
    keep: dict[int, torch.Tensor] = {}
    for group in groups:
        n_keep = method.channels_to_keep(group.size, ratios[group.axis])
        if n_keep < group.size:
            keep[group.axis] = scores[group.axis].topk(n_keep).indices.sort().values
    return keep


def chosen_heads(graph: DependencyGraph, heads: dict[str, list[int]]) -> dict[int, torch.Tensor]:
    """``{group axis: kept heads}`` removing exactly the heads named per attention module."""
    groups = graph.head_groups()
    keep: dict[int, torch.Tensor] = {}
    for module, indices in heads.items():
        matches = [g for g in groups if any(_within(name, module) for name in g.modules())
                   or any(a.module == module for a in g.attributes)]
        if len(matches) != 1:
            found = "no attention heads" if not matches else f"{len(matches)} attention layers"
            raise ConfigError(f"HeadPruning.heads: module {module!r} has {found}; name one "
                              f"attention layer, e.g. one of "
                              f"{[common_prefix(g.modules()) for g in groups][:3]}")
        group = matches[0]
        removed = set(indices)
        if max(removed, default=-1) >= group.size or len(removed) >= group.size:
            raise ConfigError(f"HeadPruning.heads[{module!r}] = {indices}: that attention layer "
                              f"has {group.size} heads and must keep at least one")
        keep[group.axis] = torch.tensor([h for h in range(group.size) if h not in removed])
    return keep


def _within(name: str, module: str) -> bool:
    return name == module or name.startswith(module + ".")


def common_prefix(names: list[str]) -> str:
    parts = [name.split(".") for name in names]
    prefix = []
    for pieces in zip(*parts):
        if len(set(pieces)) > 1:
            break
        prefix.append(pieces[0])
    return ".".join(prefix)


def _global_ratios(groups: list[Group], method: _ChannelMethod,
                   scores: dict[int, torch.Tensor], ratio: float) -> dict[int, float]:
    """Per-group ratios that remove the model-wide lowest scores, each divided by its group's
    mean unless the criterion's scores already share one scale."""
    same_scale = getattr(CRITERIA.get(method.criterion), "same_scale", False)

    def scale(group: Group) -> torch.Tensor | float:
        return 1.0 if same_scale else scores[group.axis].abs().mean().clamp_min(1e-12)

    normalised = [(float(v), g.axis) for g in groups for v in scores[g.axis] / scale(g)]
    normalised.sort()
    budget = int(ratio * len(normalised))
    removed = dict.fromkeys((g.axis for g in groups), 0)
    cap = {g.axis: int(method.max_ratio * g.size) for g in groups}
    for _, axis in normalised:
        if budget == 0:
            break
        if removed[axis] < cap[axis]:
            removed[axis] += 1
            budget -= 1
    return {g.axis: removed[g.axis] / g.size for g in groups}


def choose_channels(graph: DependencyGraph, method: _ChannelMethod, data: Iterable | None = None,
                    loss_fn: LossFn | None = None) -> dict[int, torch.Tensor]:
    """Score and choose in one go: ``{group axis: kept indices}`` at ``method.ratio``."""
    return keep_from_scores(graph, method, score_groups(graph, method, data, loss_fn))


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
