"""Leave alone the groups whose pruning breaks the model, and prune the rest.

Some widths are hard-coded in a model's ``forward`` in ways no trace can see — a reshape to
``C // self.num_heads`` where ``C`` is another tensor's width, a literal in a config. Pruning
such a group makes the model fail to run, change its output shapes, or (with verification on)
disagree with its masked twin. Rather than give up on the whole model, we try the full plan
and, if it fails, bisect the groups: a failing half is split until each bad group is found and
left unpruned with the error that condemned it. Every try is done in place and rolled back.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from .apply import evaluate_applied
from .graph.dependency import DependencyGraph
from .plan import Plan
from .planner import plan_from_keep
from .trace import output_shapes
from .verify import DEFAULT_TOLERANCE, Counted, compare_in_place


@dataclass
class SkippedGroup:
    """A group left unpruned because pruning it broke the model."""

    group: str
    reason: str


def plan_that_works(graph: DependencyGraph, model: nn.Module, example_inputs: Any,
                    keep: dict[int, torch.Tensor], method: dict, check_equivalence: bool = True,
                    tolerance: float = DEFAULT_TOLERANCE,
                    reference_shapes: list[tuple[int, ...]] | None = None,
                    counted: list[Counted] | None = None,
                    outputs_may_narrow: bool = False) -> tuple[Plan, list[SkippedGroup], bool]:
    """The largest plan (by bisection over groups) whose pruned model runs and verifies.

    With equivalence checking, the first try is the whole plan; when it verifies, the model is
    left pruned (the returned flag says so) and ``counted`` receives the FLOPs and output
    shapes before and after. Otherwise the model is left as it was.
    ``reference_shapes`` are the unpruned model's output shapes, if the caller has them;
    with ``outputs_may_narrow`` an output dim may shrink (a base model's hidden size).
    """
    if reference_shapes is None and not check_equivalence:
        reference_shapes = output_shapes(model, example_inputs)
    applied, tries = False, 0

    def failure(axes: list[int]) -> str | None:
        nonlocal applied, tries
        plan = plan_from_keep(graph, {a: keep[a] for a in axes}, method)
        first, tries = tries == 0, tries + 1
        try:
            if check_equivalence:
                report = compare_in_place(model, example_inputs, plan, tolerance, keep=first,
                                          counted=counted if first else None)
                applied = first and report.ok
                return None if report.ok else str(report)
            return _runs(model, example_inputs, plan, reference_shapes, outputs_may_narrow)
        except Exception as error:  # the pruned model no longer runs
            return f"{type(error).__name__}: {error}"

    accepted: list[int] = []
    skipped: list[SkippedGroup] = []
    describe = {g.axis: str(g) for g in graph.all_groups}

    def search(candidates: list[int]) -> None:
        if not candidates:
            return
        why = failure(accepted + candidates)
        if why is None:
            accepted.extend(candidates)
        elif len(candidates) == 1:
            skipped.append(SkippedGroup(describe.get(candidates[0], "?"), why))
        else:
            middle = len(candidates) // 2
            search(candidates[:middle])
            search(candidates[middle:])

    search(list(keep))
    return plan_from_keep(graph, {a: keep[a] for a in accepted}, method), skipped, applied


def shapes_allowed(shapes: list[tuple[int, ...]], reference: list[tuple[int, ...]],
                   may_narrow: bool = False) -> bool:
    """The same output shapes, or with ``may_narrow`` the same outputs and ranks with no dim
    larger than before."""
    if not may_narrow:
        return shapes == reference
    return len(shapes) == len(reference) and all(
        len(new) == len(old) and all(n <= o for n, o in zip(new, old))
        for new, old in zip(shapes, reference))


def _runs(model: nn.Module, example_inputs: Any, plan: Plan,
          reference_shapes: list[tuple[int, ...]], may_narrow: bool = False) -> str | None:
    def shape_change(pruned: nn.Module) -> str | None:
        shapes = output_shapes(pruned, example_inputs)
        return (None if shapes_allowed(shapes, reference_shapes, may_narrow)
                else f"output shapes changed {reference_shapes} -> {shapes}")

    return evaluate_applied(model, plan, shape_change)

