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

from ..batches import LossFn
from ..checks.checks import Check, Equivalence, Runs
from ..errors import ConfigError
from ..plan import Plan
from ..planning.proposal import Proposal  # noqa: F401  (methods' base, re-exported)
from ..surgery.configs import update_config

METHODS: dict[str, type["PruningMethod"]] = {}


@dataclass
class PruneContext:
    """What ``pk.prune`` hands a method besides the model and its example inputs."""

    ignore: tuple[nn.Module, ...] = ()
    strict: bool = False
    data: Iterable | None = None  # re-iterable: pk.prune reads a one-shot iterator into a list
    loss_fn: LossFn | None = None


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


class PruningMethod(ABC):
    """The base of every pruning method (see the module docstring).

    A subclass is a dataclass whose fields are its settings; they round-trip through
    ``to_dict``/``method_from_dict``. ``cli_name`` is the name ``prunekit --method`` takes.
    """

    cli_name: ClassVar[str | None] = None

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
        registered (``prunekit.surgery.configs``; Hugging Face's is ``hf.config``)."""
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
    def from_options(cls, **options: Any) -> "PruningMethod":
        """This method built from the options that are its fields (others, and None values,
        are left out): how the command line builds any method."""
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in options.items() if k in names and v is not None})


def method_from_dict(data: dict[str, Any]) -> PruningMethod:
    """Rebuild a method from ``to_dict()``'s output."""
    data = dict(data)
    kind = METHODS.get(data.pop("method", ""))
    if kind is None:
        raise ConfigError(f"unknown pruning method in {data!r}")
    return kind(**data)


def check_ratio(ratio: Any, what: str) -> None:
    if isinstance(ratio, bool) or not isinstance(ratio, (int, float)) or not 0 <= ratio < 1:
        # a method's first argument is its ratio: a criterion there is an easy slip
        hint = (f" (the criterion is the second argument or criterion=, e.g. "
                f"criterion={ratio!r})" if isinstance(ratio, str) and what.endswith(".ratio")
                else "")
        raise ConfigError(f"{what} must be a number in [0, 1), got {ratio!r}{hint}")


def cli_methods() -> dict[str, type[PruningMethod]]:
    """``{command-line name: method class}`` of every method that has one."""
    # only a class's own name: a user's subclass of FilterPruning does not take over "filter"
    return {cls.__dict__["cli_name"]: cls for cls in METHODS.values()
            if cls.__dict__.get("cli_name")}
