"""Budgets: find how much to prune so that a fraction of FLOPs or parameters goes.

Every candidate is applied in place, measured and undone (``evaluate_applied``), so the
numbers are the pruned model's own, not an estimate.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from .apply import evaluate_applied
from .errors import PruneError
from .graph.dependency import DependencyGraph
from .layers import removal
from .measure import count_flops, count_params
from .methods import _ChannelMethod
from .planner import keep_from_scores, plan_from_keep
from .stacks import find_block_stack


def ratio_for_budget(graph: DependencyGraph, model: nn.Module, example_inputs: Any,
                     method: _ChannelMethod, scores: dict) -> float | None:
    """The ratio that removes ``method.flops_target`` of FLOPs (or ``params_target`` of
    parameters), by bisection until within half a point, else the closest ratio tried;
    ``None`` when the method has no budget."""
    target = method.flops_target if method.flops_target is not None else method.params_target
    if target is None:
        return None

    def size(pruned: nn.Module) -> int:
        if method.flops_target is not None:
            return count_flops(pruned, example_inputs)
        return count_params(pruned)

    base = size(model)

    def reduction(ratio: float) -> float:
        keep = keep_from_scores(graph, method, scores, ratio, dither=True)
        return 1 - evaluate_applied(model, plan_from_keep(graph, keep, {}), size) / max(base, 1)

    what = "FLOPs" if method.flops_target is not None else "parameters"
    low, high = 0.0, method.max_ratio
    most = reduction(high)
    if most < target - 0.005:
        raise PruneError(f"{type(method).__name__}: cannot remove {target:.1%} of {what}; "
                         f"removing up to max_ratio={method.max_ratio} of every group removes "
                         f"{most:.1%}. The model was left unchanged")
    best = (abs(most - target), high)
    for _ in range(20):
        middle = (low + high) / 2
        achieved = reduction(middle)
        best = min(best, (abs(achieved - target), middle))
        if best[0] <= 0.005:
            break
        low, high = (middle, high) if achieved < target else (low, middle)
    return best[1]


def layers_for_budget(model: nn.Module, example_inputs: Any, ranked: list[str],
                      target: float, flops: int) -> list[str]:
    """The shortest prefix of ``ranked`` whose removal takes away ``target`` of the FLOPs."""
    stack = find_block_stack(model)
    for n in range(1, len(ranked) + 1):
        remaining = evaluate_applied(model, removal(ranked[:n], stack),
                                     lambda pruned: count_flops(pruned, example_inputs))
        if 1 - remaining / max(flops, 1) >= target - 0.005:
            return ranked[:n]
    return ranked
