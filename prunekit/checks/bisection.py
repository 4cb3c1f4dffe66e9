"""Leave alone the pieces whose pruning breaks the model, and keep the rest.

Some widths are hard-coded in a model's ``forward`` in ways no trace can see — a reshape to
``C // self.num_heads`` where ``C`` is another tensor's width, a literal in a config. Pruning
such a group makes the model fail to run, change its output shapes, or fail its method's
check. Rather than give up on the whole model, we check the full proposal and, if it fails,
bisect its pieces: a failing half is split until each bad piece is found and left unpruned
with the reason that condemned it. Every try is applied in place and rolled back, so the
model is always left as it was found.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

from torch import nn

from ..measure.model import Measurement, size_and_outputs
from ..plan import Plan
from ..selection.proposal import Proposal
from .checks import Check, CheckReport
from .verify import PrunedModelFailed, as_check_inputs


@dataclass
class SkippedGroup:
    """A piece (a group of channels, a layer) left unpruned because pruning it broke the
    model or failed the check, and why."""

    group: str
    reason: str


@dataclass
class Bisection:
    """The largest plan that passed the check, what was left out and why, the model's size
    before and with the plan applied, and the check's report on that plan (None when nothing
    passed)."""

    plan: Plan
    before: Measurement
    after: Measurement
    skipped: list[SkippedGroup] = field(default_factory=list)
    report: CheckReport | None = None
    tries: int = 0
    kept: bool = False  # the plan is applied to the model (see ``largest_passing_plan``)


def largest_passing_plan(model: nn.Module, inputs: Any, proposal: Proposal, check: Check,
                         keep: Callable[[nn.Module, Plan], None] | None = None) -> Bisection:
    """Check the whole proposal, then bisect its pieces until every failing one is found.
    ``inputs``: the example inputs, or ``CheckInputs`` with data batches too. The sizes
    before and after come from the checks' own forward passes (one more pass only when no
    check ran to the end). A piece is left out when its plan does not apply, the pruned
    model raises, or the check fails; an error in the check itself propagates.

    With ``keep``, a whole proposal that passes at the first try stays applied, and
    ``keep(pruned, plan)`` runs inside the transaction that applied it (``result.kept``): the
    common case applies its plan once instead of checking, undoing and applying it again.
    Otherwise the model is left as it was found, and the caller applies ``result.plan``."""
    inputs = as_check_inputs(inputs)
    unmeasured = Measurement(0, 0)
    result = Bisection(proposal.plan([]), unmeasured, unmeasured)
    accepted: list = []

    def failure(pieces: list) -> str | None:
        first = result.tries == 0
        result.tries += 1
        plan = proposal.plan(accepted + pieces)
        try:
            if first and keep is not None:
                report = check.run_and_keep(model, inputs, plan, keep)
                result.kept = report.ok
            else:
                report = check.run(model, inputs, plan)
        except PrunedModelFailed as failed:  # the plan breaks the model
            return str(failed)
        if result.before is unmeasured and report.unpruned is not None:
            result.before = report.unpruned
        if not report.ok:
            return str(report)
        result.plan, result.report = plan, report
        result.after = report.pruned if report.pruned is not None else unmeasured
        return None

    # depth first, first half before second half; a loop rather than a recursive closure,
    # whose reference cycle would keep the proposal (and the unpruned tensors its graph
    # holds) alive until the next garbage collection
    pending = [list(proposal.pieces)]
    while pending:
        pieces = pending.pop()
        if not pieces:
            continue
        why = failure(pieces)
        if why is None:
            accepted.extend(pieces)
        elif len(pieces) == 1:
            result.skipped.append(SkippedGroup(proposal.describe(pieces[0]), why))
        else:
            middle = len(pieces) // 2
            pending += [pieces[middle:], pieces[:middle]]
    if result.before is unmeasured:
        result.before = size_and_outputs(model, inputs.example)[0]
    if result.after is unmeasured:  # nothing passed: the model stays as it is
        result.after = result.before
    return result
