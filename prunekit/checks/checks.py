"""What a pruned model must satisfy, as objects that say exactly what they checked.

A method picks its check (``PruningMethod.check``): equivalence of the masked and pruned
models for the exact methods, "runs, outputs may narrow" for hidden-size pruning, "the named
blocks are bypassed and nothing else changed" for layer removal, and "runs with the same
output shapes" when the caller turns verification off. Every check runs on the model in
place and leaves it exactly as it found it; a pruned model that raises makes ``run`` raise.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, Protocol

import torch
from torch import nn

from ..measure import Measurement, size_and_outputs
from ..plan import Plan, original_name
from ..surgery.apply import evaluate_applied
from .verify import DEFAULT_TOLERANCE, compare_in_place

Shapes = list[tuple[int, ...]]


class CheckReport(Protocol):
    ok: bool
    # the sizes of the unpruned and the pruned model, measured in the check's forward passes
    unpruned: Measurement | None
    pruned: Measurement | None

    def __str__(self) -> str: ...


class Check(ABC):
    """A property of the pruned model, checked with the plan applied in place and undone."""

    @abstractmethod
    def run(self, model: nn.Module, example_inputs: Any, plan: Plan) -> CheckReport:
        """Check ``plan`` on ``model``; the model is left as it was."""


def shapes_allowed(shapes: Shapes, reference: Shapes, may_narrow: bool = False) -> bool:
    """The same output shapes, or with ``may_narrow`` the same outputs and ranks with no dim
    larger than before."""
    if not may_narrow:
        return shapes == reference
    return len(shapes) == len(reference) and all(
        len(new) == len(old) and all(n <= o for n, o in zip(new, old))
        for new, old in zip(shapes, reference))


@dataclass
class Equivalence(Check):
    """The masked model (removed channels zeroed in every member) and the pruned model give
    the same outputs within ``tolerance`` of the output scale."""

    tolerance: float = DEFAULT_TOLERANCE

    def run(self, model, example_inputs, plan):
        return compare_in_place(model, example_inputs, plan, self.tolerance)


@dataclass
class RunsReport:
    ok: bool
    shapes: Shapes
    reference: Shapes
    may_narrow: bool
    unpruned: Measurement | None = None
    pruned: Measurement | None = None

    def __str__(self) -> str:
        what = "narrower or equal" if self.may_narrow else "the same"
        verdict = "runs" if self.ok else "does NOT keep its output shapes"
        return (f"{verdict}: output shapes {what} ({self.reference} -> {self.shapes}); "
                f"outputs not compared")


@dataclass
class Runs(Check):
    """The pruned model runs and its output shapes are the same as the unpruned model's (or,
    with ``may_narrow``, no dim is larger). Outputs are not compared."""

    may_narrow: bool = False

    def run(self, model, example_inputs, plan):
        unpruned, reference = _measured(model, example_inputs)
        pruned, shapes = evaluate_applied(model, plan,
                                          lambda m: _measured(m, example_inputs))
        return RunsReport(shapes_allowed(shapes, reference, self.may_narrow), shapes,
                          reference, self.may_narrow, unpruned, pruned)


def _measured(model: nn.Module, example_inputs: Any) -> tuple[Measurement, Shapes]:
    size, outputs = size_and_outputs(model, example_inputs)
    return size, [tuple(t.shape) for t in outputs]


@dataclass
class BypassReport:
    ok: bool
    removed: list[str]
    unchanged: int
    problems: list[str]
    unpruned: Measurement | None = None
    pruned: Measurement | None = None

    def __str__(self) -> str:
        if self.ok:
            return (f"blocks bypassed: {', '.join(self.removed)} removed; the other "
                    f"{self.unchanged} parameter tensors are unchanged and the output shapes "
                    f"are the same")
        return "blocks NOT cleanly bypassed: " + "; ".join(self.problems[:3])


@dataclass
class BlocksBypassed(Check):
    """The plan's layers are gone (deleted from their stack or replaced by an identity), every
    other parameter is the same tensor with the same values, and the output shapes are the
    unpruned model's."""

    def run(self, model, example_inputs, plan):
        unpruned, reference = _measured(model, example_inputs)
        before = {name: p.detach().clone() for name, p in model.named_parameters()}
        removed = {name for name in before
                   if any(name.startswith(layer + ".") for layer in plan.layers)}

        def inspect(pruned: nn.Module) -> BypassReport:
            problems = []
            size, shapes = _measured(pruned, example_inputs)
            if shapes != reference:
                problems.append(f"output shapes {reference} -> {shapes}")
            seen = set()
            for name, p in pruned.named_parameters():
                old = original_name(name, plan.layers, plan.stacks)
                seen.add(old)
                if old in removed or old not in before:
                    problems.append(f"{name} should have been removed")
                elif before[old].shape != p.shape or not torch.equal(before[old], p.detach()):
                    problems.append(f"{name} changed")
            missing = set(before) - removed - seen
            problems += [f"{name} disappeared" for name in sorted(missing)[:3]]
            modules = dict(pruned.named_modules())
            for layer in plan.layers:
                if layer in modules and not plan.stacks and not isinstance(modules[layer],
                                                                           nn.Identity):
                    problems.append(f"{layer} is still there")
            return BypassReport(not problems, list(plan.layers), len(seen), problems, unpruned,
                                size)

        return evaluate_applied(model, plan, inspect)
