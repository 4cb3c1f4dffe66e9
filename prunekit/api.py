"""``pk.prune``: one path for every method — measure, propose, check, apply."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Iterable

from torch import nn

from .calls import evaluating
from .checks.bisection import SkippedGroup, largest_passing_plan
from .checks.checks import CheckReport
from .checks.verify import DEFAULT_TOLERANCE
from .errors import ConfigError, PruneError
from .measure import Measurement
from .methods.base import PruneContext, PruningMethod
from .plan import Plan
from .surgery.apply import apply_plan


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

    @property
    def param_reduction(self) -> float:
        return 1 - self.after.params / max(self.before.params, 1)

    @property
    def flop_reduction(self) -> float:
        return 1 - self.after.flops / max(self.before.flops, 1)

    def __str__(self) -> str:
        text = (f"params {self.before.params:,} -> {self.after.params:,} "
                f"(-{self.param_reduction:.1%}), FLOPs {self.before.flops:,} -> "
                f"{self.after.flops:,} (-{self.flop_reduction:.1%})")
        if self.skipped:
            text += f"; {len(self.skipped)} left unpruned (see result.skipped)"
        return text


def prune(model: nn.Module, example_inputs: Any, method: PruningMethod, *,
          ignore: Iterable[nn.Module] = (), data: Iterable | None = None,
          loss_fn: Callable[[Any, Any], Any] | None = None, strict: bool = False,
          check: bool = True, tolerance: float = DEFAULT_TOLERANCE) -> PruneResult:
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
            ``(inputs, targets)`` pair. A one-shot iterator is read into a list once.
        loss_fn: ``loss_fn(outputs, batch) -> loss`` for gradient criteria; by default the
            model's own loss or the cross-entropy of the outputs against the batch's targets.
        strict: raise on any op without a coupling rule instead of leaving its dims alone.
        check: check each proposed piece with the method's check before changing the model
            (equivalence of the masked and pruned models within ``tolerance`` for the exact
            methods); pieces that break the model or fail it are left unpruned and listed in
            ``result.skipped``. With ``check=False`` only "it still runs, with the same output
            shapes" is checked.

    Returns:
        A ``PruneResult`` with ``plan`` (JSON-able), ``before``, ``after`` and ``report``.

    Example:
        >>> result = pk.prune(model, torch.randn(1, 3, 224, 224), pk.FilterPruning(0.5, "l1"))
        >>> print(result)
    """
    if not isinstance(method, PruningMethod):
        raise ConfigError(f"method must be a pruning method (a pk.PruningMethod such as "
                          f"pk.FilterPruning(...)), got {type(method).__name__}")
    if data is not None and iter(data) is data:  # a generator would be spent by its first use
        data = list(data)
    context = PruneContext(tuple(ignore or ()), strict, data, loss_fn)
    with evaluating(model):
        proposal = method.propose(model, example_inputs, context)  # traces: names a failing module
        outcome = largest_passing_plan(model, example_inputs, proposal,
                                       method.check(check, tolerance))
        del proposal  # a traced graph holds references to the unpruned tensors
        if outcome.skipped and outcome.plan.is_empty:
            reasons = "; ".join(f"{s.group}: {s.reason}" for s in outcome.skipped[:3])
            raise PruneError(f"nothing could be pruned without breaking the model, so it was "
                             f"left unchanged ({reasons})")
        recovery = method.recovery(model, context)

        def recover(pruned: nn.Module) -> None:
            if recovery is not None:
                recovery(pruned, outcome.plan)

        # the one place the model changes: the checked plan, with recovery in the transaction
        apply_plan(model, outcome.plan, check=recover)
    return PruneResult(outcome.plan, outcome.before, outcome.after, outcome.skipped,
                       method.update_config(model), outcome.report)
