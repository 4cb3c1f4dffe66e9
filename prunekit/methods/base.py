"""``PruningMethod``: everything ``pk.prune`` and the workflows ask of a method.

A method answers for itself: what it proposes to remove from a model (``propose``: its
candidates, their scores and the plan they become, in pieces), what the result must satisfy
(``check``), what runs on the pruned model inside the same transaction (``recovery``), how a
Hugging Face config follows (``update_config``), how it is split into steps
(``step``), tried one piece at a time (``trials``) and previewed (``preview``). ``pk.prune``
is one path for every method; nothing else looks at a method's type.

Subclasses register themselves by class name, so a plan's ``method`` entry rebuilds them
(``method_from_dict``).
"""

from __future__ import annotations

import dataclasses
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar, Iterable

from torch import nn

from ..checks.checks import Check, Equivalence, Runs
from ..core.arguments import check_number
from ..core.batches import LossFn
from ..core.progress import Reporter, silent
from ..core.tables import ResultTable
from ..errors import ConfigError
from ..plan import Plan
from ..selection.proposal import Proposal  # noqa: F401  (methods' base, re-exported)
from ..surgery.configs import update_config

METHODS: dict[str, type["PruningMethod"]] = {}


@dataclass
class PruneContext:
    """What ``pk.prune`` hands a method besides the model and its example inputs."""

    ignore: tuple[nn.Module, ...] = ()
    strict: bool = False
    data: Iterable | None = None  # re-iterable: pk.prune reads a one-shot iterator into a list
    loss_fn: LossFn | None = None
    progress: Reporter = silent  # called with a pk.Step as each piece of a long stage ends


@dataclass
class Trial:
    """One piece pruned alone at one ratio (sensitivity analysis)."""

    label: str
    size: int
    ratio: float
    plan: Plan


@dataclass
class PreviewRow:
    """What a method would remove from one candidate (``prunekit analyze``)."""

    label: str
    size: int
    removed: int
    detail: str


@dataclass
class Preview:
    """A method's candidates and what each would lose, and the ops its trace had no rule
    for (their dims are left unpruned)."""

    rows: list[PreviewRow]
    unknown_ops: list = field(default_factory=list)

    def table(self, limit: int | None = None) -> ResultTable:
        """The candidates (the first ``limit``), and a note per op left unpruned."""
        shown = self.rows if limit is None else self.rows[:limit]
        table = ResultTable(f"{len(self.rows)} candidates",
                            ["candidate", "size", "would remove", "members"],
                            [[r.label, str(r.size), str(r.removed), r.detail] for r in shown],
                            align="lrrl")
        if len(self.rows) > len(shown):
            table.notes.append(f"… and {len(self.rows) - len(shown)} more")
        table.notes += [f"no coupling rule for {op.op} in {op.module}: its dims are left "
                        f"unpruned" for op in self.unknown_ops]
        return table

    def __str__(self) -> str:
        return self.table().to_text()


class PruningMethod(ABC):
    """The base of every pruning method (see the module docstring).

    A subclass is a dataclass whose fields are its settings; they round-trip through
    ``to_dict``/``method_from_dict``. ``cli_name`` is the name ``prunekit --method`` takes.
    """

    cli_name: ClassVar[str | None] = None
    # pk.prune_streamed runs a method whose own class body says streams = True (a subclass
    # may change anything, so it says so again), as its streamed_stage() says
    streams: ClassVar[bool] = False

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        METHODS[cls.__name__] = cls

    @abstractmethod
    def propose(self, model: nn.Module, example_inputs: Any, context: PruneContext) -> Proposal:
        """Score the candidates and propose what to remove; the model is left as it was."""

    def check(self, verify: bool, tolerance: float) -> Check:
        """What the pruned model must satisfy: equivalence with the masked model, or with
        ``verify=False`` only that it runs with the same output shapes."""
        return Equivalence(tolerance) if verify else Runs()

    def recovery(self, model: nn.Module, context: PruneContext
                 ) -> Callable[[nn.Module, Plan], None] | None:
        """Something to run on the pruned model inside the transaction that prunes it
        (re-fitting layers, say), prepared from the unpruned ``model``; None for nothing."""
        return None

    def update_config(self, model: nn.Module) -> bool | None:
        """Make the model's config describe the pruned model, by the updater its family
        registered (``prunekit.surgery.configs``; Hugging Face's is ``adapters.hf.config``)."""
        return update_config(model)

    def step(self, step: int, steps: int, removed: dict[str, float]) -> "PruningMethod | None":
        """The method for ``step`` (1-based) of ``steps`` that leads to this one's target;
        ``removed`` is what the earlier steps removed (``{"flops": …, "params": …}``,
        fractions of the original). None when there is nothing left to do in this step."""
        raise ConfigError(f"{type(self).__name__} cannot be split into steps")

    def prunable_size(self, model: nn.Module, example_inputs: Any) -> int | None:
        """How many units (channels, heads) this method could prune in ``model``: iterative
        pruning counts them before and between steps, so that a ratio's steps end where
        one shot would (``removed["units"]``); None where the method does not count them."""
        return None

    def trials(self, model: nn.Module, example_inputs: Any, ratios: Iterable[float],
               context: PruneContext) -> Iterable[Trial]:
        """Each candidate pruned alone at each ratio, for sensitivity analysis."""
        raise ConfigError(f"{type(self).__name__} has no sensitivity analysis")

    def preview(self, model: nn.Module, example_inputs: Any) -> Preview:
        """What this method would remove from each candidate, without scoring."""
        raise ConfigError(f"{type(self).__name__} has no preview")

    def streamed_stage(self) -> str:
        """How ``pk.prune_streamed`` runs this method, one block in memory at a time:
        ``"width"`` (each block pruned on its own), ``"depth"`` (blocks scored, then left out)
        or ``"hidden"`` (one decision for every block); a ``ConfigError`` says what streaming
        cannot do."""
        raise ConfigError(f"streamed pruning takes FilterPruning or ChannelPruning (MLP "
                          f"neurons), HeadPruning, HiddenPruning or LayerPruning, not "
                          f"{type(self).__name__}")

    def summary(self) -> str:
        """A short description for tables and logs."""
        return f"{type(self).__name__}()"

    def to_dict(self) -> dict[str, Any]:
        return {"method": type(self).__name__, **dataclasses.asdict(self)}

    @staticmethod
    def from_dict(data: dict[str, Any]) -> "PruningMethod":
        """The method ``to_dict()`` described, of whichever class it names."""
        return method_from_dict(data)

    @classmethod
    def from_options(cls, optional: dict[str, Any] | None = None, **options: Any
                     ) -> "PruningMethod":
        """This method built from command-line options: how the command line builds any
        method. ``options`` given a value (not None) must be fields of this method, or the
        ``ConfigError`` names the option and the methods that take it; ``optional`` ones
        (the shared defaults: ``ratio``, ``n``) are taken where they are fields."""
        names = {f.name for f in dataclasses.fields(cls)}
        for name, value in options.items():
            if value is not None and name not in names:
                takers = [cli for cli, method in cli_methods().items()
                          if name in {f.name for f in dataclasses.fields(method)}]
                option = "--" + name.replace("_", "-")
                choices = ", ".join(takers[:-1]) + f" or {takers[-1]}" if len(takers) > 1 \
                    else "".join(takers)
                raise ConfigError(f"{option}: --method {cls.cli_name} has no {option} option; "
                                  f"use --method {choices}")
        given = {**(optional or {}), **options}
        return cls(**{k: v for k, v in given.items() if k in names and v is not None})


def method_from_dict(data: dict[str, Any]) -> PruningMethod:
    """Rebuild a method from ``to_dict()``'s output."""
    data = dict(data)
    kind = METHODS.get(data.pop("method", ""))
    if kind is None:
        raise ConfigError(f"unknown pruning method in {data!r}")
    return kind(**data)


def check_ratio(ratio: Any, what: str) -> None:
    # a method's first argument is its ratio: a criterion there is an easy slip
    hint = (f" (the criterion is the second argument or criterion=, e.g. criterion={ratio!r})"
            if isinstance(ratio, str) and what.endswith(".ratio") else "")
    try:
        check_number(ratio, what, below=1)
    except ConfigError as error:
        raise ConfigError(f"{error}{hint}") from None


def cli_methods() -> dict[str, type[PruningMethod]]:
    """``{command-line name: method class}`` of every method that has one."""
    # only a class's own name: a user's subclass of FilterPruning does not take over "filter"
    return {cls.__dict__["cli_name"]: cls for cls in METHODS.values()
            if cls.__dict__.get("cli_name")}
