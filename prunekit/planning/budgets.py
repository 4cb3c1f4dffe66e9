"""Budgets: find how much to prune so that a fraction of FLOPs or parameters goes, or so
that the model runs in a fraction of its time.

Every candidate is applied in place, measured and undone (``evaluate_applied``), so the
numbers are the pruned model's own, not an estimate; latency is timed, interleaved with a
copy of the unpruned model, on this machine.
"""

from __future__ import annotations

import copy
from typing import Any, Callable

from torch import nn

from ..errors import PruneError
from ..latency import Speedup, compare_latency
from ..measure import count_flops, count_params
from ..plan import Plan
from ..surgery.apply import evaluate_applied

TOLERANCE = 0.005  # a budget is met within half a percentage point when it can be
LATENCY_TOLERANCE = 0.05  # a latency target is met within 5% of itself


def size_of(model: nn.Module, example_inputs: Any, quantity: str) -> int:
    """``"flops"`` or ``"params"`` of the model as it is."""
    return count_flops(model, example_inputs) if quantity == "flops" else count_params(model)


def ratio_for_budget(model: nn.Module, example_inputs: Any, plan_at: Callable[[float], Plan],
                     quantity: str, target: float, max_ratio: float, who: str) -> float:
    """The ratio whose plan (``plan_at(ratio)``) removes ``target`` of the model's
    ``quantity`` (``"flops"`` or ``"params"``), by bisection until within half a point, else
    the closest ratio tried."""
    base = size_of(model, example_inputs, quantity)

    def reduction(ratio: float) -> float:
        remaining = evaluate_applied(model, plan_at(ratio),
                                     lambda pruned: size_of(pruned, example_inputs, quantity))
        return 1 - remaining / max(base, 1)

    what = "FLOPs" if quantity == "flops" else "parameters"
    low, high = 0.0, max_ratio
    most = reduction(high)
    if most < target - TOLERANCE:
        raise PruneError(f"{who}: cannot remove {target:.1%} of {what}; removing up to "
                         f"max_ratio={max_ratio} of every group removes {most:.1%}. The model "
                         f"was left unchanged")
    best = (abs(most - target), high)
    for _ in range(20):
        middle = (low + high) / 2
        achieved = reduction(middle)
        best = min(best, (abs(achieved - target), middle))
        if best[0] <= TOLERANCE:
            break
        low, high = (middle, high) if achieved < target else (low, middle)
    return best[1]


def ratio_for_latency(model: nn.Module, example_inputs: Any, plan_at: Callable[[float], Plan],
                      target: float, max_ratio: float, who: str) -> tuple[float, Speedup]:
    """The ratio whose pruned model runs in ``target`` of the unpruned model's time (within
    5% of the target), and that model's measured speed-up. Each candidate is timed
    interleaved with a copy of the unpruned model (held for the search), on the example
    inputs with torch's thread count: measured, not predicted from FLOPs."""
    reference = copy.deepcopy(model)

    def timed(ratio: float) -> Speedup:
        return evaluate_applied(model, plan_at(ratio), lambda pruned: compare_latency(
            reference, pruned, example_inputs, min_time=1.0))

    tolerance = LATENCY_TOLERANCE * target
    most = timed(max_ratio)
    if 1 / most.speedup > target + tolerance:
        raise PruneError(f"{who}: cannot reach {target:.0%} of the unpruned latency on this "
                         f"machine: removing max_ratio={max_ratio} of every group runs in "
                         f"{1 / most.speedup:.0%} of it ({most}). Raise max_ratio, prune "
                         f"layers as well, or aim higher; the model was left unchanged")
    best = (abs(1 / most.speedup - target), max_ratio, most)
    low, high = 0.0, max_ratio
    for _ in range(12):
        if best[0] <= tolerance:
            break
        middle = (low + high) / 2
        speed = timed(middle)
        reached = 1 / speed.speedup
        if abs(reached - target) < best[0]:
            best = (abs(reached - target), middle, speed)
        low, high = (middle, high) if reached > target else (low, middle)
    # the search timed each candidate briefly; the plan it settled on is timed at length,
    # and that is the number reported
    chosen = best[1]
    final = evaluate_applied(model, plan_at(chosen), lambda pruned: compare_latency(
        reference, pruned, example_inputs, min_time=2.0))
    return chosen, final


def shortest_prefix_for_budget(model: nn.Module, example_inputs: Any, ranked: list[str],
                               plan_for: Callable[[list[str]], Plan], target: float,
                               flops: int) -> list[str]:
    """The shortest prefix of ``ranked`` whose removal (``plan_for(prefix)``) takes away
    ``target`` of the FLOPs, or all of them."""
    for n in range(1, len(ranked) + 1):
        remaining = evaluate_applied(model, plan_for(ranked[:n]),
                                     lambda pruned: count_flops(pruned, example_inputs))
        if 1 - remaining / max(flops, 1) >= target - TOLERANCE:
            return ranked[:n]
    return ranked
