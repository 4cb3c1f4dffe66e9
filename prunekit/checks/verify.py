"""The correctness oracle: a masked copy and a physically pruned copy must agree.

Masking zeroes, in every member tensor, the channels the plan removes. Because a group holds
every tensor that reads or writes those channels, the zeroed channels contribute nothing, so
the masked model computes exactly what the smaller model computes.
"""

from __future__ import annotations

import copy
from dataclasses import replace
from typing import Any, Callable, TypeVar

import torch
from torch import nn

from ..core.arguments import check_model, keyword_only
from ..core.calls import call_model, copied_inputs, evaluating, named_tensors
from ..errors import ConfigError
from ..graph.trace import find_selections
from ..measure.model import Measurement, size_and_outputs
from ..plan import Plan
from ..surgery.apply import Rollback, apply_plan, evaluate_applied
from .comparison import DEFAULT_TOLERANCE, VerifyReport, compare_outputs
from .inputs import (  # noqa: F401  (CheckInputs, widened … re-exported: long imported from here)
    CheckInputs,
    as_check_inputs,
    check_inputs,
    compared_in_float64,
    widened,
)
from .masking import COPY_LIMIT, _mask_parameters, mask  # noqa: F401

# a check in float32 (or below) that fails by at most this share of an output's scale is run
# again in float64: summing a smaller layer's products in another order moves the outputs of
# a model whose hidden states run far above them (SmolLM2's first layers carry values in the
# thousands) by 2e-4 of their scale, and a correct plan would be refused for its rounding
ROUNDING_SUSPECT = 1e-2

T = TypeVar("T")
R = TypeVar("R")


class PrunedModelFailed(Exception):
    """Applying a plan or running the pruned model raised ``error``: the plan broke the
    model (as opposed to a fault in the check itself, which propagates as it is)."""

    def __init__(self, error: BaseException):
        super().__init__(f"{type(error).__name__}: {error}")
        self.error = error


def run_pruned(model: nn.Module, plan: Plan, evaluate: Callable[[nn.Module], T]) -> T:
    """``evaluate`` on the model with ``plan`` applied, then restored; whatever applying or
    running it raises comes out as ``PrunedModelFailed``."""
    return judge_pruned(model, plan, evaluate, lambda read: read)


def judge_pruned(model: nn.Module, plan: Plan, evaluate: Callable[[nn.Module], T],
                 judge: Callable[[T], R], keep: Callable[[nn.Module, Plan], None] | None = None
                 ) -> R:
    """The report ``judge`` makes of what ``evaluate`` reads from the model with ``plan``
    applied in place.

    The model is restored afterwards, unless ``keep`` is given and the report is ok: then
    ``keep(pruned, plan)`` runs inside the transaction that applied the plan, and the model stays
    pruned. That saves undoing a plan that passed only to apply it again. Whatever applying
    the plan or ``evaluate`` raises comes out as ``PrunedModelFailed`` (the plan broke the
    model); an error in ``judge`` or ``keep`` is the caller's own and propagates as it is,
    the model restored either way.
    """
    reports: list[R] = []
    applied = False

    def read_judge_keep_or_undo(pruned: nn.Module) -> None:
        nonlocal applied
        applied = True
        try:
            read = evaluate(pruned)
        except Exception as error:
            raise PrunedModelFailed(error) from error
        reports.append(judge(read))
        if keep is None or not reports[0].ok:
            raise Rollback
        keep(pruned, plan)

    try:
        apply_plan(model, plan, check=read_judge_keep_or_undo)
    except Rollback:
        pass
    except PrunedModelFailed:
        raise
    except Exception as error:
        if applied:  # from judge or keep
            raise
        raise PrunedModelFailed(error) from error
    return reports[0]


def _owned(outputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Outputs copied into memory of their own: an output that is a buffer of the model, or
    the caller's input written in place, would otherwise be overwritten by the next run, and
    the masked and the pruned model's outputs would be one tensor compared with itself."""
    return {name: tensor.clone() for name, tensor in outputs.items()}


def _outputs_on(model: nn.Module, inputs: CheckInputs
                ) -> tuple[Measurement, list[dict[str, torch.Tensor]]]:
    """The model's size (measured on the example inputs) and its outputs on every input,
    each run on its own copy of the inputs and each output copied."""
    size, first = size_and_outputs(model, copied_inputs(inputs.example))
    if not inputs.batches:  # the common case: no eval-mode walk of the model for nothing
        return size, [_owned(first)]
    rest = []
    with evaluating(model), torch.no_grad():
        for batch in inputs.batches:
            output = call_model(model, copied_inputs(batch))
            rest.append(_owned({name: t.detach() for name, t in named_tensors(output)}))
    return size, [_owned(first), *rest]


def _masked_outputs(model: nn.Module, inputs: CheckInputs, plan: Plan
                    ) -> tuple[Measurement | None, list[dict[str, torch.Tensor]]]:
    if plan.layers:  # a removed layer's "mask" is the identity it is replaced by
        rest = Plan(tensors=plan.tensors, shapes=plan.shapes)
        _, outputs = evaluate_applied(model, Plan(layers=plan.layers, stacks=plan.stacks),
                                      lambda swapped: _masked_outputs(swapped, inputs, rest))
        return None, outputs  # the swapped model is not the unpruned one: no size to report
    undo = _mask_parameters(model, plan)
    try:
        return _outputs_on(model, inputs)  # masking changes no shape: the unpruned size
    finally:
        with torch.no_grad():
            for restore in undo:
                restore()


def compare_in_place(model: nn.Module, inputs: Any, plan: Plan,
                     tolerance: float = DEFAULT_TOLERANCE,
                     keep: Callable[[nn.Module, Plan], None] | None = None) -> VerifyReport:
    """Masked vs pruned outputs of ``model`` on every input of ``inputs`` (example inputs or
    ``CheckInputs``), computed in place and undone afterwards; in float64 when
    ``inputs.float64_because`` says why, if the model runs in float64 (otherwise in its own
    precision, and the report says so). A check in the model's own precision that fails by
    what rounding could explain is run again in float64, and that report is the verdict
    (its inputs say why); a model that does not run in float64 keeps the first report.

    With ``keep``, a plan that passes stays applied and ``keep(pruned, plan)`` runs before the
    transaction that applied it closes (see ``judge_pruned``).

    Raises ``PrunedModelFailed`` when the plan does not apply or the pruned model no longer
    runs (the model is restored); anything the masked model raises propagates as it is.
    """
    inputs = as_check_inputs(inputs)
    if inputs.float64_because:
        return _compare_in_float64(model, inputs, plan, tolerance, keep)
    report = _compare(model, inputs, plan, tolerance, keep)
    because = _rounding_suspected(report)
    if because is None:
        return report
    try:
        return _compare_in_float64(model, replace(inputs, float64_because=because), plan,
                                   tolerance, keep)
    except Exception:  # it does not run in float64 (a dtype check, a float32 constant …)
        return report


def _compare_in_float64(model: nn.Module, inputs: CheckInputs, plan: Plan, tolerance: float,
                        keep: Callable[[nn.Module, Plan], None] | None) -> VerifyReport:
    with widened(model):  # the pruned model's new tensors would stay in float64: not kept
        report = _compare(model, inputs.in_float64(), plan, tolerance)
    if report.ok and keep is not None:
        apply_plan(model, plan, check=lambda pruned: keep(pruned, plan))
    return report


def _rounding_suspected(report: VerifyReport) -> str | None:
    """Why a failed check is run again in float64, or None when rounding cannot explain it:
    every failing output finite, of its shape, below float64 and off by at most
    ``ROUNDING_SUSPECT`` of its scale. A wrong plan's difference is still there in float64;
    rounding's shrinks a billionfold."""
    failing = [o for o in report.outputs if not o.ok]
    if report.ok or not failing or any(
            o.problem or o.dtype in ("float64", "complex128")
            or o.relative_diff > ROUNDING_SUSPECT for o in failing):
        return None
    worst = max(failing, key=lambda o: o.relative_diff)
    return (f"in {worst.dtype} they differed by {worst.relative_diff:.2g} of an output's "
            f"scale, past the tolerance: rounding or a wrong plan, which float64 tells apart")


def _compare(model: nn.Module, inputs: CheckInputs, plan: Plan, tolerance: float,
             keep: Callable[[nn.Module, Plan], None] | None = None) -> VerifyReport:
    unpruned, expected = _masked_outputs(model, inputs, plan)

    def judge(read: tuple[Measurement, list[dict[str, torch.Tensor]]]) -> VerifyReport:
        pruned, actual = read
        comparisons, per_input = [], 0
        for i, (e, a) in enumerate(zip(expected, actual)):
            comparisons += compare_outputs(e, a, tolerance, f" (batch {i})" if i else "")
            per_input = per_input or len(comparisons)
        return VerifyReport(comparisons, tolerance, inputs.describe(), list(plan.layers),
                            unpruned, pruned, per_input=per_input)

    return judge_pruned(model, plan, lambda m: _outputs_on(m, inputs), judge, keep)


@keyword_only
def verify(original_model: nn.Module, example_inputs: Any, plan: Plan, *,
           tolerance: float = DEFAULT_TOLERANCE) -> VerifyReport:
    """Check that the plan's masked and pruned versions of a model give the same outputs:
    every output tensor, each within ``tolerance`` of its own largest value (looser for
    half-precision outputs, see ``tolerance_for``), all finite.

    A plan that only removes layers changes what the model computes, so there is nothing to
    be equivalent to: it is refused (its check is ``pk.checks.BlocksBypassed``). Layers
    removed by a plan that also prunes channels are removed from both models.

    Args:
        original_model: the unpruned model; it is copied, never changed.
        example_inputs: inputs as for ``pk.prune``, or ``CheckInputs`` for several.
        plan: the plan to check.
        tolerance: largest allowed max-abs difference relative to each output's scale.

    Returns:
        A ``VerifyReport``; ``report.ok`` is the verdict, ``str(report)`` says what was
        compared.

    Example:
        >>> report = pk.verify(original, x, result.plan); assert report.ok, report
    """
    check_model(original_model)
    if plan.layers and not plan.tensors:
        raise ConfigError("pk.verify: this plan only removes layers, which changes what the "
                          "model computes, so there is no equivalent model to compare with; "
                          "check it with pk.checks.BlocksBypassed (what pk.prune does)")
    model = copy.deepcopy(original_model)
    if isinstance(example_inputs, CheckInputs):
        inputs = example_inputs
    else:  # the inputs pk.prune's own check would have used
        inputs = check_inputs(model, example_inputs, [], find_selections(model, example_inputs))
    try:
        return compare_in_place(model, inputs, plan, tolerance)
    except PrunedModelFailed as failed:
        raise failed.error
