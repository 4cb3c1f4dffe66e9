"""What a pruned model must satisfy, as objects that say exactly what they checked.

A method picks its check (``PruningMethod.check``): equivalence of the masked and pruned
models for the exact methods, "runs, outputs may narrow" for hidden-size pruning, "the named
blocks are bypassed and nothing else changed" for layer removal, and "runs with the same
output shapes" when the caller turns verification off. Every check runs on the model in
place and leaves it exactly as it found it; a plan that does not apply, or a pruned model
that raises, makes ``run`` raise ``PrunedModelFailed``.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Callable, Protocol

import torch
from torch import nn

from ..core.calls import call_model, evaluating, iter_tensors
from ..measure.model import Measurement, size_and_outputs
from ..plan import Plan, original_name
from ..surgery.apply import apply_plan
from .comparison import DEFAULT_TOLERANCE
from .verify import (
    CheckInputs,
    as_check_inputs,
    compare_in_place,
    judge_pruned,
)

Shapes = list[tuple[int, ...]]


class CheckReport(Protocol):
    ok: bool
    checked: str  # what was checked, in two or three words, for a table's column
    # the sizes of the unpruned and the pruned model, measured in the check's forward passes
    unpruned: Measurement | None
    pruned: Measurement | None

    def __str__(self) -> str: ...


class Check(ABC):
    """A property of the pruned model, checked with the plan applied in place and undone."""

    @abstractmethod
    def run(self, model: nn.Module, inputs: CheckInputs, plan: Plan) -> CheckReport:
        """Check ``plan`` on ``model`` (on every input of ``inputs``); the model is left as
        it was. Whatever applying the plan or running the pruned model raises comes out as
        ``PrunedModelFailed`` (use ``run_pruned``); other errors are the check's own."""

    def run_and_keep(self, model: nn.Module, inputs: CheckInputs, plan: Plan,
                     keep: Callable[[nn.Module, Plan], None]) -> CheckReport:
        """``run``, except that a plan that passes stays applied, ``keep(pruned, plan)`` run before
        the transaction that applies it closes (an error in ``keep`` restores the model and
        propagates). This default checks and then applies the plan again; the built-in
        checks judge the pruned model and keep it in one application (``judge_pruned``)."""
        report = self.run(model, inputs, plan)
        if report.ok:
            apply_plan(model, plan, check=lambda pruned: keep(pruned, plan))
        return report


class _KeptInOneApplication(Check):
    """A check whose ``run`` takes ``keep`` itself, so the plan it passes is applied once."""

    @abstractmethod
    def run(self, model, inputs, plan, keep=None):
        """As ``Check.run``; with ``keep``, as ``Check.run_and_keep``."""

    def run_and_keep(self, model, inputs, plan, keep):
        return self.run(model, inputs, plan, keep)


def shapes_allowed(shapes: Shapes, reference: Shapes, may_narrow: bool = False) -> bool:
    """The same output shapes, or with ``may_narrow`` the same outputs and ranks with no dim
    larger than before."""
    if not may_narrow:
        return shapes == reference
    return len(shapes) == len(reference) and all(
        len(new) == len(old) and all(n <= o for n, o in zip(new, old))
        for new, old in zip(shapes, reference))


@dataclass
class Equivalence(_KeptInOneApplication):
    """The masked model (removed channels zeroed in every member) and the pruned model give
    the same outputs: every output tensor within ``tolerance`` of its own scale (looser for
    half precision), all finite."""

    tolerance: float = DEFAULT_TOLERANCE

    def run(self, model, inputs, plan, keep=None):
        return compare_in_place(model, inputs, plan, self.tolerance, keep)


@dataclass
class RunsReport:
    checked = "runs, same shapes"
    ok: bool
    shapes: Shapes
    reference: Shapes
    may_narrow: bool
    inputs: str = "the example inputs"
    unpruned: Measurement | None = None
    pruned: Measurement | None = None

    def __str__(self) -> str:
        what = "narrower or equal" if self.may_narrow else "the same"
        verdict = "runs" if self.ok else "does NOT keep its output shapes"
        return (f"{verdict} on {self.inputs}: output shapes {what} ({self.reference} -> "
                f"{self.shapes}); outputs not compared")


@dataclass
class Runs(_KeptInOneApplication):
    """The pruned model runs and its output shapes are the same as the unpruned model's (or,
    with ``may_narrow``, no dim is larger). Outputs are not compared."""

    may_narrow: bool = False

    def run(self, model, inputs, plan, keep=None):
        inputs = as_check_inputs(inputs)
        unpruned, reference = _measured(model, inputs)

        def judge(read: tuple[Measurement, Shapes]) -> RunsReport:
            pruned, shapes = read
            return RunsReport(shapes_allowed(shapes, reference, self.may_narrow), shapes,
                              reference, self.may_narrow, inputs.describe(), unpruned, pruned)

        return judge_pruned(model, plan, lambda m: _measured(m, inputs), judge, keep)


def _measured(model: nn.Module, inputs: CheckInputs) -> tuple[Measurement, Shapes]:
    """The size on the example inputs, and the output shapes on every input, in order."""
    size, outputs = size_and_outputs(model, inputs.example)
    shapes = [tuple(t.shape) for t in outputs.values()]
    with evaluating(model), torch.no_grad():
        for batch in inputs.batches:
            shapes += [tuple(t.shape) for t in iter_tensors(call_model(model, batch))]
    return size, shapes


@dataclass
class BypassReport:
    checked = "blocks bypassed"
    ok: bool
    removed: list[str]
    unchanged: int
    problems: list[str]
    inputs: str = "the example inputs"
    unpruned: Measurement | None = None
    pruned: Measurement | None = None

    def __str__(self) -> str:
        if self.ok:
            return (f"blocks bypassed: {', '.join(self.removed)} removed; the other "
                    f"{self.unchanged} parameter tensors are unchanged and the output shapes "
                    f"on {self.inputs} are the same (what the model computes has changed: "
                    f"outputs are not compared)")
        return "blocks NOT cleanly bypassed: " + "; ".join(self.problems[:3])


@dataclass
class BlocksBypassed(_KeptInOneApplication):
    """The plan's layers are gone (deleted from their stack or replaced by an identity), every
    other parameter is the same tensor with the same values, and the output shapes are the
    unpruned model's. Removing a block changes what the model computes, so outputs are not
    compared: this check never claims equivalence."""

    def run(self, model, inputs, plan, keep=None):
        inputs = as_check_inputs(inputs)
        unpruned, reference = _measured(model, inputs)
        before = {name: p.detach().clone() for name, p in model.named_parameters()}
        removed = {name for name in before
                   if any(name.startswith(layer + ".") for layer in plan.layers)}

        def look(pruned: nn.Module):
            size, shapes = _measured(pruned, inputs)
            modules = dict(pruned.named_modules())
            still_there = [layer for layer in plan.layers if layer in modules
                           and not plan.stacks and not isinstance(modules[layer], nn.Identity)]
            return size, shapes, dict(pruned.named_parameters()), still_there

        def judge(read) -> BypassReport:
            size, shapes, parameters, still_there = read
            problems = [f"output shapes {reference} -> {shapes}"] if shapes != reference else []
            seen = set()
            for name, p in parameters.items():
                old = original_name(name, plan.layers, plan.stacks)
                seen.add(old)
                if old in removed or old not in before:
                    problems.append(f"{name} should have been removed")
                elif before[old].shape != p.shape or not torch.equal(before[old], p.detach()):
                    problems.append(f"{name} changed")
            missing = set(before) - removed - seen
            problems += [f"{name} disappeared" for name in sorted(missing)[:3]]
            problems += [f"{layer} is still there" for layer in still_there]
            return BypassReport(not problems, list(plan.layers), len(seen), problems,
                                inputs.describe(), unpruned, size)

        return judge_pruned(model, plan, look, judge, keep)
