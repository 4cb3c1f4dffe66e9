"""The two kinds of channel criteria, and what a weight criterion sees.

A criterion never looks at layer types. A ``WeightCriterion`` sees each member of a group as a
matrix (one row per channel); a ``DataCriterion`` reads activations or gradients over the
batches given as ``data=`` and scores whole groups at once; a ``LayerCriterion`` scores whole
layers (``prunekit.importance.layers`` holds the built-in ones). Register either with
``pk.register_criterion`` (``registry.py``).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, ClassVar, Iterable

import torch
from torch import nn

if TYPE_CHECKING:
    from ..core.batches import LossFn
    from ..graph.dependency import DependencyGraph, Group


@dataclass
class ChannelView:
    """One member of a group, seen along the pruned channels.

    ``matrix`` has one row per channel of the group and one column per weight that belongs to
    that channel in this member (kernel taps, the other layer's channels, repeated blocks …).
    """

    member: str
    role: str | None
    matrix: torch.Tensor  # (channels, features)


class WeightCriterion(ABC):
    """Scores one group's channels from its members' weights; higher means more important.

    ``reads_role`` names the members the criterion wants to see (``"norm"``: the group's
    normalisation layers); ``None`` leaves it to the method (a filter method shows the
    producers, a channel method the consumers).
    """

    reads_role: ClassVar[str | None] = None

    @abstractmethod
    def score(self, views: list[ChannelView], generator: torch.Generator) -> torch.Tensor:
        """One score per channel (``views[i].matrix.shape[0]`` of them)."""


class DataCriterion(ABC):
    """Scores groups from what the model computes on ``data``; higher means more important.

    Groups it cannot read (no activation site, say) are left out of the result, and the
    method ranks them by their weights instead.
    """

    @abstractmethod
    def score_groups(self, graph: DependencyGraph, groups: list[Group], data: Iterable,
                     loss_fn: LossFn | None = None) -> dict[int, torch.Tensor]:
        """``{group.axis: one score per channel}`` for the groups it can score."""


@dataclass
class LayerContext:
    """What a layer criterion may need besides the model, candidates and batches."""

    stack: str | None  # the transformer's layer stack, if the model has one
    loss_fn: Callable[[Any, Any], torch.Tensor] | None = None
    n: int = 1  # how many layers will go (the window of a windowed criterion)


class LayerCriterion(ABC):
    """Scores candidate layers; higher means more important.

    ``needs_data``: it measures the model on ``data=``. ``window``: the score of a layer is
    that of the ``n`` consecutive layers starting there, so the ``n`` layers go together.
    """

    needs_data: ClassVar[bool] = True
    window: ClassVar[bool] = False

    @abstractmethod
    def score_layers(self, model: nn.Module, candidates: list[str], batches: list,
                     context: LayerContext) -> list[float]:
        """One score per candidate, in the candidates' order."""

    def streamed_span(self, n: int) -> int | None:
        """How many consecutive blocks one score spans when it is measured from the hidden
        states entering and leaving them (as streamed pruning measures it, one block in memory
        at a time); ``None``: it needs more than hidden states."""
        return None

    def span_distance(self, inputs: torch.Tensor, outputs: torch.Tensor,
                      batch: dict) -> tuple[float, int]:
        """The summed score of one batch's samples, and how many samples went in, from the
        hidden states entering the span (``inputs``) and leaving it (``outputs``)."""
        raise NotImplementedError(f"{type(self).__name__} does not score from hidden states")


Criterion = Any  # a WeightCriterion, DataCriterion or LayerCriterion
