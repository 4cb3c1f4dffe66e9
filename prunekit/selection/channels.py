"""From scores to kept channels: how many each group loses, and which.

These are the pieces ``GroupPruning.select`` is made of; each takes plain values (groups,
scores, ratios) and returns plain values.
"""

from __future__ import annotations

import math

import torch

from ..errors import ConfigError
from ..graph.dependency import Group


def channels_to_keep(size: int, ratio: float, round_to: int = 1) -> int:
    """How many of ``size`` channels remain after removing ``ratio`` of them, rounded up to a
    multiple of ``round_to``; at least one."""
    keep = size - math.floor(size * ratio + 1e-9)
    keep = math.ceil(keep / round_to) * round_to
    return max(1, min(size, keep))


def dithered_ratios(groups: list[Group], ratio_of: dict[int, float]) -> dict[int, float]:
    """Each group's ratio with the rounding error carried from group to group (each group
    still within one channel of its ratio), so that the total removed moves one channel at a
    time as the ratio grows and a budget can be met closely."""
    ratios, carry = {}, 0.0
    for group in groups:
        exact = group.size * ratio_of[group.axis] + carry
        removed = math.floor(exact + 1e-9)
        carry = exact - removed
        ratios[group.axis] = removed / group.size
    return ratios


def global_ratios(groups: list[Group], scores: dict[int, torch.Tensor], ratio: float,
                  max_ratio: float, comparable: bool) -> dict[int, float]:
    """Per-group ratios that remove the model-wide lowest ``ratio`` of channels, at most
    ``max_ratio`` of any group. Scores are divided by their group's mean unless they are
    ``comparable`` as they are (one scale across groups)."""

    def scale(group: Group) -> torch.Tensor | float:
        return 1.0 if comparable else scores[group.axis].abs().mean().clamp_min(1e-12)

    normalised = sorted((float(v), g.axis) for g in groups for v in scores[g.axis] / scale(g))
    budget = int(ratio * len(normalised))
    removed = dict.fromkeys((g.axis for g in groups), 0)
    cap = {g.axis: int(max_ratio * g.size) for g in groups}
    for _, axis in normalised:
        if budget == 0:
            break
        if removed[axis] < cap[axis]:
            removed[axis] += 1
            budget -= 1
    return {g.axis: removed[g.axis] / g.size for g in groups}


def lowest_by_weight(groups: list[Group], scores: dict[int, torch.Tensor],
                     weights: dict[int, int], ratio: float, max_ratio: float
                     ) -> dict[int, int]:
    """How many units each group loses when the model-wide lowest scores go, each unit
    weighing ``weights[group axis]`` (the parameters it takes with it), until the weight
    removed is the nearest to ``ratio`` of the groups' total that a threshold on the scores
    gives (FLAP's rule); a group loses at most ``max_ratio`` of its units, and its units
    past that are passed over."""
    ranked = sorted((float(v), g.axis) for g in groups for v in scores[g.axis])
    left = ratio * sum(g.size * weights[g.axis] for g in groups)
    removed = dict.fromkeys((g.axis for g in groups), 0)
    cap = {g.axis: int(max_ratio * g.size + 1e-9) for g in groups}
    for _, axis in ranked:
        if removed[axis] >= cap[axis]:
            continue
        if left < weights[axis] / 2:  # removing it would overshoot by more than stopping short
            break
        removed[axis] += 1
        left -= weights[axis]
    return removed


def highest(scores: torch.Tensor, n_keep: int) -> torch.Tensor:
    """The indices of the ``n_keep`` highest scores, in increasing order."""
    return scores.topk(n_keep).indices.sort().values


def chosen_heads(groups: list[Group], heads: dict[str, list[int]]) -> dict[int, torch.Tensor]:
    """``{group axis: kept heads}`` removing exactly the heads named per attention module."""
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
    """The longest dotted prefix the names share (an attention layer's name from its
    members')."""
    parts = [name.split(".") for name in names]
    prefix = []
    for pieces in zip(*parts):
        if len(set(pieces)) > 1:
            break
        prefix.append(pieces[0])
    return ".".join(prefix)
