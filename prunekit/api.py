"""``pk.prune``: one path for every method — measure, propose, check, apply."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from itertools import islice
from typing import Any, Callable, Iterable

import torch
from torch import nn

from .checks.bisection import SkippedGroup, largest_passing_plan
from .checks.checks import CheckReport
from .checks.comparison import DEFAULT_TOLERANCE
from .checks.verify import check_inputs
from .core.arguments import (
    check_example_inputs,
    check_model,
    check_optimizer,
    check_tolerance,
    checked_data,
)
from .core.batches import split_batch
from .core.calls import copied_inputs, evaluating
from .core.progress import ProgressOption, Step, finish, reporter
from .core.tables import ResultTable
from .errors import ConfigError, PruneError
from .measure.latency import LatencyReached, Speedup
from .measure.model import Measurement, count_params
from .methods.base import PruneContext, PruningMethod
from .plan import Plan
from .recover.optimizers import rebind_optimizer
from .surgery.apply import apply_plan

# batches of data= the check runs on besides the example inputs
VERIFY_BATCHES = 2
SHOWN_SKIPPED = 5


@dataclass
class PruneResult:
    """What ``pk.prune`` did: the plan, the model's size before and after, the pieces it left
    alone because pruning them broke the model or failed the check (each with the reason),
    the method's check on what was pruned (``report``: what it checked and found), and for a
    Hugging Face model whether its config describes the pruned model (``config_matches``:
    True means ``save_pretrained`` reloads it with plain ``from_pretrained``; False means
    save it with ``pk.save``; None for other models)."""

    plan: Plan
    before: Measurement
    after: Measurement
    skipped: list[SkippedGroup] = field(default_factory=list)
    config_matches: bool | None = None
    report: CheckReport | None = None
    # ops the trace had no coupling rule for: the dims they touch were left as they are
    unknown_ops: list = field(default_factory=list)
    # a latency target and what the search reached, timed against the unpruned model (for
    # the plan as proposed: pieces the check skipped, listed in ``skipped``, stay unpruned)
    latency: LatencyReached | None = None

    @property
    def param_reduction(self) -> float:
        return 1 - self.after.params / max(self.before.params, 1)

    @property
    def flop_reduction(self) -> float:
        return 1 - self.after.flops / max(self.before.flops, 1)

    def __str__(self) -> str:
        return "\n".join([f"params {self.before.params:,} -> {self.after.params:,} "
                          f"(-{self.param_reduction:.1%}), FLOPs {self.before.flops:,} -> "
                          f"{self.after.flops:,} (-{self.flop_reduction:.1%})", *self.details()])

    def table(self, speed: Speedup | None = None) -> ResultTable:
        """Params and FLOPs before and after, and with ``speed`` (``pk.compare_latency`` of
        the two models) their latency: what the command line shows above ``details()``."""
        timed = speed is not None
        table = ResultTable("before and after pruning", ["", "params", "FLOPs"]
                            + (["latency ms, median (quartiles)"] if timed else []))
        timings = (speed.before, speed.after) if timed else (None, None)
        for label, m, timing in (("before", self.before, timings[0]),
                                 ("after", self.after, timings[1])):
            table.rows.append([label, f"{m.params:,}", f"{m.flops:,}"]
                              + ([f"{timing.median_ms:.2f} ({timing.low_ms:.2f}–"
                                  f"{timing.high_ms:.2f})"] if timed else []))
        change = None if not timed else ("within the noise" if speed.within_noise
                                         else f"{speed.change:+.1%}")
        table.rows.append(["change", f"{-self.param_reduction:+.1%}",
                           f"{-self.flop_reduction:+.1%}"] + ([change] if timed else []))
        if timed:
            table.notes.append(f"latency: {speed.describe()}; {speed.conditions()}")
        return table

    def details(self) -> list[str]:
        """What ``print(result)`` says after the sizes, a line each: layers removed, the
        latency reached, the check, ops without a rule, pieces left unpruned (the command
        line prints the same lines under its table)."""
        lines = []
        if self.plan.is_empty:
            lines.append("nothing was pruned: the ratio or budget removes no channel, head or "
                         "layer here (the model is as it was)")
        if self.plan.layers:
            lines.append(f"removed layers: {', '.join(self.plan.layers)}")
        if self.latency is not None:
            lines.append(str(self.latency))
        if self.report is not None:
            lines.append(f"check: {self.report}")
        for op in self.unknown_ops[:SHOWN_SKIPPED]:
            lines.append(f"no coupling rule for {op.op} in {op.module or 'the model'}: the "
                         f"dims it touches were left unpruned")
        if self.skipped:
            lines.append(f"{len(self.skipped)} left unpruned, because pruning them broke the "
                         f"model or failed the check:")
            lines += [f"  {s.group}: {s.reason}" for s in self.skipped[:SHOWN_SKIPPED]]
            if len(self.skipped) > SHOWN_SKIPPED:
                lines.append(f"  ... and {len(self.skipped) - SHOWN_SKIPPED} more "
                             f"(result.skipped)")
        return lines


def prune(model: nn.Module, example_inputs: Any, method: PruningMethod, *,
          ignore: Iterable[nn.Module] = (), data: Iterable | None = None,
          loss_fn: Callable[[Any, Any], Any] | None = None, strict: bool = False,
          check: bool = True, tolerance: float = DEFAULT_TOLERANCE,
          optimizer: torch.optim.Optimizer | None = None,
          progress: ProgressOption = None) -> PruneResult:
    """Prune ``model`` in place with ``method`` and return the plan and before/after sizes.

    Args:
        model: the model to prune; changed in place, or left exactly as it was on error.
        example_inputs: a tensor (``model(x)``), tuple (``model(*x)``) or dict (``model(**x)``).
        method: a ``pk.PruningMethod``: ``FilterPruning(...)``, ``ChannelPruning(...)``,
            ``HeadPruning(...)``, ``HiddenPruning(...)``, ``LayerPruning(...)`` or your own.
        ignore: modules whose dims stay as they are (for layer pruning: never removed). The
            layers producing the model's outputs always keep their output size.
        data: an iterable of batches, for data-driven criteria (``"apoz"``,
            ``"mean_activation"``, ``"taylor"`` …): each batch is the model's inputs or an
            ``(inputs, targets)`` pair. A one-shot iterator is read into a list once. The
            check also runs on its first ``VERIFY_BATCHES`` batches.
        loss_fn: ``loss_fn(outputs, batch) -> loss`` for gradient criteria; by default the
            model's own loss or the cross-entropy of the outputs against the batch's targets.
        strict: raise on any op without a coupling rule instead of leaving its dims alone.
        check: check each proposed piece with the method's check before changing the model
            (equivalence of the masked and pruned models for the exact methods: every output
            within ``tolerance`` of its own scale, looser for half precision, all finite);
            pieces that break the model or fail it are left unpruned and listed in
            ``result.skipped``. With ``check=False`` only "it still runs, with the same output
            shapes" is checked. Only the paths the example inputs and data batches take
            through the model's control flow are checked.
        optimizer: an optimizer built on ``model`` before this call. Pruning replaces the
            parameters it shrinks, so an optimizer built earlier no longer trains the model;
            given here, it is rebound to the pruned parameters, its per-parameter state
            (momentum, moments) sliced to the kept channels. Otherwise build it afterwards.
        progress: ``True`` shows each stage (scoring, checking, re-fitting), its item and
            the time left on stderr; a callable receives a ``pk.Step`` instead.

    Returns:
        A ``PruneResult`` with ``plan`` (JSON-able), ``before``, ``after`` and ``report``.

    Example:
        >>> result = pk.prune(model, torch.randn(1, 3, 224, 224), pk.FilterPruning(0.5, "l1"))
        >>> print(result)
    """
    if not isinstance(method, PruningMethod):
        raise ConfigError(f"method must be a pruning method (a pk.PruningMethod such as "
                          f"pk.FilterPruning(...)), got {type(method).__name__}")
    check_model(model)
    check_example_inputs(example_inputs)
    check_tolerance(tolerance)
    check_optimizer(optimizer)
    given = example_inputs  # a data batch that is the example inputs is not checked twice
    example_inputs = copied_inputs(example_inputs)  # a forward may write into its inputs
    data = checked_data(model, data, example_inputs)
    report = reporter(progress)
    context = PruneContext(tuple(ignore or ()), strict, data, loss_fn, report)
    # verified on a few batches of data too: control flow real data takes is checked as well
    batches = [split_batch(batch)[0] for batch in islice(data or (), VERIFY_BATCHES)]
    batches = [batch for batch in batches if batch is not given]
    with evaluating(model):
        report(Step("tracing and scoring", detail=method.summary()))
        proposal = method.propose(model, example_inputs, context)  # traces: names a failing module
        inputs = check_inputs(model, example_inputs, batches, proposal.selections)
        recovery = method.recovery(model, context)
        config_matches: list[bool | None] = []

        def recover_and_update(pruned: nn.Module, plan: Plan) -> None:
            if recovery is not None:
                recovery(pruned, plan)
            config_matches.append(method.update_config(pruned))

        # the model changes only as a checked plan, with recovery and the config update
        # inside the same transaction (an error or an interrupt undoes all of it): kept by
        # the check when the whole proposal passes, applied below otherwise
        unpruned_parameters = dict(model.named_parameters())
        report(Step("checking the pruned model"))
        outcome = largest_passing_plan(model, inputs, proposal, method.check(check, tolerance),
                                       keep=recover_and_update)
        unknown_ops = proposal.unknown_ops
        latency = getattr(proposal, "latency", None)
        del proposal  # a traced graph holds references to the unpruned tensors
        if outcome.skipped and outcome.plan.is_empty:
            reasons = "; ".join(f"{s.group}: {s.reason}" for s in outcome.skipped[:3])
            raise PruneError(f"nothing could be pruned without breaking the model, so it was "
                             f"left unchanged ({reasons})")
        if not outcome.kept:
            apply_plan(model, outcome.plan,
                       check=lambda pruned: recover_and_update(pruned, outcome.plan))
    if outcome.plan.biased:  # biases given after the check measured the pruned model
        outcome.after = replace(outcome.after, params=count_params(model))
    if optimizer is not None:
        rebind_optimizer(optimizer, unpruned_parameters, model, outcome.plan)
    finish(report)
    return PruneResult(outcome.plan, outcome.before, outcome.after, outcome.skipped,
                       config_matches[0], outcome.report, unknown_ops, latency)
