"""Every criterion by name, with what it scores and what it needs.

One registry serves methods, error messages and the command line's help. A name may mean
different criteria for different targets (``"taylor"`` on channels is Molchanov's activation
× gradient; on heads it is the head-mask gradient; ``"output"`` is a head's or a block's
measured output change), so entries are keyed by target and name.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterable

from ..errors import ConfigError, did_you_mean
from .base import DataCriterion, LayerCriterion, WeightCriterion

TARGETS = ("channels", "heads", "layers")


@dataclass(frozen=True)
class CriterionEntry:
    """A registered criterion and its declared metadata.

    Attributes:
        name: what methods and the command line call it.
        criterion: the object that scores.
        target: ``"channels"``, ``"heads"`` or ``"layers"``.
        needs_data: it reads ``data=``.
        comparable: its scores share one scale across groups (global ranking compares them
            as they are instead of dividing by each group's mean).
        summary: one line for help texts.
        streams: a block alone computes it as the whole model does, so streamed pruning
            (``pk.prune_streamed``, one block in memory at a time) can use it.
    """

    name: str
    criterion: Any
    target: str
    needs_data: bool
    comparable: bool
    summary: str
    streams: bool = False


_REGISTRY: dict[tuple[str, str], CriterionEntry] = {}


def register_criterion(name: str, criterion: Any, *, scores: Iterable[str] = ("channels",),
                       needs_data: bool | None = None, comparable: bool = False,
                       summary: str = "", streams: bool = False) -> None:
    """Make ``criterion`` available by ``name`` to every method that prunes what it scores.

    Args:
        name: the name methods take (``FilterPruning(criterion=name)``).
        criterion: a ``WeightCriterion`` or ``DataCriterion`` for channels and heads, a
            ``LayerCriterion`` for layers.
        scores: what it can score: any of ``"channels"``, ``"heads"``, ``"layers"``.
        needs_data: whether it reads ``data=``; by default, whether it is a data criterion.
        comparable: its scores compare across groups as they are (see ``CriterionEntry``).
        summary: one line for ``--help`` and error messages.
        streams: a block alone computes it as the whole model does (its weights, or the
            block's own activations), so ``pk.prune_streamed`` may use it. A layer criterion
            that streams and reads data scores from a block window's input and output hidden
            states: it implements ``LayerCriterion.streamed_span`` and ``span_distance``.

    Example:
        >>> pk.register_criterion("max_abs", MaxAbs(), scores=("channels", "heads"))
    """
    targets = [scores] if isinstance(scores, str) else list(scores)
    if not isinstance(name, str) or not name:
        raise ConfigError(f"register_criterion: name must be a non-empty string, got {name!r}")
    for target in targets:
        if target not in TARGETS:
            raise ConfigError(f"register_criterion({name!r}): scores={target!r} is unknown; "
                              f"choose from {list(TARGETS)}")
        kinds = (LayerCriterion,) if target == "layers" else (WeightCriterion, DataCriterion)
        if not isinstance(criterion, kinds):
            wanted = " or ".join(k.__name__ for k in kinds)
            raise ConfigError(f"register_criterion({name!r}): scoring {target} takes a "
                              f"{wanted} subclass, got {type(criterion).__name__}")
        data = isinstance(criterion, DataCriterion) or getattr(criterion, "needs_data", False)
        data = data if needs_data is None else needs_data
        if streams and target == "layers" and data and criterion.streamed_span(1) is None:
            raise ConfigError(f"register_criterion({name!r}, streams=True): a layer criterion "
                              f"that reads data streams by scoring a block window's input and "
                              f"output hidden states; implement its streamed_span() and "
                              f"span_distance()")
        _REGISTRY[(target, name)] = CriterionEntry(
            name, criterion, target, data, comparable,
            summary or (type(criterion).__doc__ or "").strip().split("\n")[0], streams)


def criterion_names(target: str) -> list[str]:
    """The names registered for ``target``, in registration order."""
    return [name for (t, name) in _REGISTRY if t == target]


def streaming_names(target: str) -> list[str]:
    """The names registered for ``target`` that streamed pruning can use."""
    return [name for (t, name), entry in _REGISTRY.items() if t == target and entry.streams]


def get_criterion(name: Any, target: str, who: str) -> CriterionEntry:
    """The entry for ``name`` on ``target``; a ``ConfigError`` naming ``who`` and the choices
    otherwise."""
    entry = _REGISTRY.get((target, name)) if isinstance(name, str) else None
    if entry is None:
        elsewhere = [t for t in TARGETS if (t, name) in _REGISTRY] if isinstance(name, str) else []
        hint = f" ({name!r} scores {' and '.join(elsewhere)})" if elsewhere else ""
        raise ConfigError(f"{who}: unknown criterion {name!r} for {target}{hint}"
                          f"{did_you_mean(name, criterion_names(target))}; choose one of "
                          f"{criterion_names(target)}")
    return entry
