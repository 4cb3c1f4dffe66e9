"""Comparing a masked model's outputs with a pruned model's: each output tensor against its
own scale, with a tolerance that follows its dtype; NaN and Inf fail."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from ..measure.model import Measurement

# float32 rounding differs between a masked and a pruned model (sums over fewer terms) and
# grows through deep networks: up to about 3e-5 of the output scale in a 6-layer BERT. A real
# mismatch is orders of magnitude larger.
DEFAULT_TOLERANCE = 1e-4
# half-precision outputs are rounded to 8 (bfloat16) or 11 (float16) significant bits, so
# the two models' rounding differs by a few units in the last place however exact the
# pruning: their tolerance is this many machine epsilons (about 3% of the output's scale in
# bfloat16), unless the caller's tolerance is larger
LOW_PRECISION_EPSILONS = 4


def tolerance_for(dtype: torch.dtype, tolerance: float) -> float:
    """The relative tolerance an output of this dtype is held to."""
    if dtype in (torch.float16, torch.bfloat16):
        return max(tolerance, LOW_PRECISION_EPSILONS * torch.finfo(dtype).eps)
    return tolerance


@dataclass
class OutputComparison:
    """One output tensor on one input: how far the pruned model is from the masked one."""

    name: str  # where it sits in the output, on which input: "['logits'] (batch 1)"
    dtype: str
    max_abs_diff: float
    scale: float  # the masked model's largest |value| in this output
    tolerance: float  # relative, for this dtype
    problem: str | None = None  # a shape change, a value that is not finite, exact mismatch
    empty: bool = False  # no values to compare (zero detections, say): fine unless all are

    @property
    def relative_diff(self) -> float:
        if self.problem:
            return math.inf
        return self.max_abs_diff / self.scale if self.scale > 0 else (
            0.0 if self.max_abs_diff == 0 else math.inf)

    @property
    def ok(self) -> bool:
        return self.problem is None and self.relative_diff <= self.tolerance


@dataclass
class VerifyReport:
    """Every output of the masked and the pruned model, compared on every input checked."""

    checked = "equivalent"  # (a class attribute: what this kind of report checks)

    outputs: list[OutputComparison]
    tolerance: float
    inputs: str = "the example inputs"
    # layers removed from both models before they were compared (a plan made in steps)
    bypassed: list[str] = field(default_factory=list)
    # the unpruned (masked: same shapes) and pruned models' sizes, measured on the way
    unpruned: Measurement | None = None
    pruned: Measurement | None = None
    per_input: int | None = None  # output tensors of one input (outputs: of every input)

    @property
    def worst(self) -> OutputComparison | None:
        def badness(o: OutputComparison) -> tuple[bool, float]:
            if o.tolerance:
                return not o.ok, o.relative_diff / o.tolerance
            return not o.ok, 0.0 if o.ok else math.inf  # compared exactly

        return max(self.outputs, key=badness, default=None)

    @property
    def max_abs_diff(self) -> float:
        return max((o.max_abs_diff for o in self.outputs), default=0.0)

    @property
    def relative_diff(self) -> float:
        """The largest difference relative to its own output's scale."""
        return max((o.relative_diff for o in self.outputs), default=0.0)

    @property
    def ok(self) -> bool:
        return any(not o.empty for o in self.outputs) and all(o.ok for o in self.outputs)

    def __str__(self) -> str:
        worst = self.worst
        count = self.per_input or len(self.outputs)
        where = (f"{count} output tensor{'s' if count != 1 else ''} on {self.inputs}"
                 + (f", with {', '.join(self.bypassed)} removed from both"
                    if self.bypassed else ""))
        if worst is None or all(o.empty for o in self.outputs):
            return f"NOT verified: the model returned no values to compare ({where})"
        if self.ok:
            return (f"equivalent: {where}; largest difference {worst.relative_diff:.3g} of "
                    f"its output's scale, in {worst.name} ({worst.dtype}, tolerance "
                    f"{worst.tolerance:g})")
        failing = [o for o in self.outputs if not o.ok]
        detail = "; ".join(
            f"{o.name}: {o.problem}" if o.problem else
            f"{o.name}: |masked - pruned| = {o.max_abs_diff:.3g}, {o.relative_diff:.3g} of "
            f"its scale (tolerance {o.tolerance:g} for {o.dtype})" for o in failing[:3])
        more = f" and {len(failing) - 3} more" if len(failing) > 3 else ""
        return f"NOT equivalent ({where}): {detail}{more}"


def compare_outputs(expected: dict[str, torch.Tensor], actual: dict[str, torch.Tensor],
                    tolerance: float, label: str = "") -> list[OutputComparison]:
    """Each masked-model output against the pruned model's output at the same place.
    Floating-point outputs must agree within the tolerance for their dtype, relative to that
    output's own largest value, and be finite; other outputs (indices, masks) exactly."""
    comparisons = []
    for name in dict.fromkeys([*expected, *actual]):
        e, a = expected.get(name), actual.get(name)
        shown = name + label
        if e is None or a is None:
            comparisons.append(OutputComparison(shown, "?", math.inf, 0.0, tolerance,
                                                "only the " + ("pruned" if e is None else
                                                               "masked") + " model returns it"))
            continue
        dtype = str(e.dtype).replace("torch.", "")
        tol = tolerance_for(e.dtype, tolerance)
        if e.shape != a.shape:
            comparisons.append(OutputComparison(shown, dtype, math.inf, 0.0, tol,
                                                f"shape {tuple(e.shape)} -> {tuple(a.shape)}"))
            continue
        if e.numel() == 0:
            comparisons.append(OutputComparison(shown, dtype, 0.0, 0.0, tol, empty=True))
            continue
        if not (e.is_floating_point() or e.is_complex()):
            same = torch.equal(e, a)
            comparisons.append(OutputComparison(shown, dtype, 0.0 if same else math.inf, 1.0,
                                                0.0, None if same else "values differ "
                                                "(compared exactly: not floating point)"))
            continue
        e, a = e.to(torch.complex128 if e.is_complex() else torch.float64), a.to(
            torch.complex128 if a.is_complex() else torch.float64)
        problem = None
        if not torch.isfinite(e).all():
            problem = "not finite (NaN or Inf) in the masked model"
        elif not torch.isfinite(a).all():
            problem = "not finite (NaN or Inf) in the pruned model"
        diff = (a - e).abs().max().item() if problem is None else math.inf
        comparisons.append(OutputComparison(shown, dtype, diff, e.abs().max().item(), tol,
                                            problem))
    return comparisons
