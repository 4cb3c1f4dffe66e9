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
from ..measure.latency import Speedup, compare_latency
from ..measure.model import count_flops, count_params
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
    most = reduction(max_ratio)
    if most < target - TOLERANCE:
        raise PruneError(f"{who}: cannot remove {target:.1%} of {what}; removing up to "
                         f"max_ratio={max_ratio} of every group removes {most:.1%}. The model "
                         f"was left unchanged")
    return _bisect(reduction, target, TOLERANCE, max_ratio, most, steps=20)


def _bisect(reduction: Callable[[float], float], target: float, tolerance: float,
            max_ratio: float, most: float, steps: int) -> float:
    """The ratio in [0, max_ratio] whose ``reduction`` (growing with the ratio; ``most`` at
    ``max_ratio``) is within ``tolerance`` of ``target``, by bisection, else the closest
    ratio tried."""
    low, high = 0.0, max_ratio
    best = (abs(most - target), high)
    for _ in range(steps):
        middle = (low + high) / 2
        achieved = reduction(middle)
        best = min(best, (abs(achieved - target), middle))
        if best[0] <= tolerance:
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

    def timed(ratio: float, min_time: float = 1.0) -> Speedup:
        return evaluate_applied(model, plan_at(ratio), lambda pruned: compare_latency(
            reference, pruned, example_inputs, min_time=min_time))

    def reduction(ratio: float) -> float:  # of latency: 1 - the fraction it runs in
        return 1 - 1 / timed(ratio).speedup

    tolerance = LATENCY_TOLERANCE * target
    fastest = timed(max_ratio)
    most = 1 - 1 / fastest.speedup
    if 1 - most > target + tolerance:
        raise PruneError(f"{who}: cannot reach {target:.0%} of the unpruned latency on this "
                         f"machine: removing max_ratio={max_ratio} of every group runs in "
                         f"{1 - most:.0%} of it ({fastest}). Raise max_ratio, prune layers "
                         f"as well, or aim higher; the model was left unchanged")
    chosen = max_ratio
    if abs(1 - most - target) > tolerance:
        chosen = _bisect(reduction, 1 - target, tolerance, max_ratio, most, steps=12)
    # the search timed each candidate briefly; the plan it settled on is timed at length,
    # and that is the number reported
    return chosen, timed(chosen, min_time=2.0)


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
