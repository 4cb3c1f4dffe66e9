"""What a method proposes to remove, in pieces: what the check's bisection reads (it may keep
some pieces and leave out others) and every method's proposal subclasses."""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any

from ..plan import Plan


class Proposal(ABC):
    """What a method proposes to remove, as pieces the bisection may keep or leave out."""

    @property
    @abstractmethod
    def pieces(self) -> list:
        """The independent pieces (group axes, layer names)."""

    @abstractmethod
    def describe(self, piece: Any) -> str:
        """A piece for messages (``result.skipped``)."""

    @abstractmethod
    def plan(self, pieces: list) -> Plan:
        """The plan that removes exactly these pieces."""

    @property
    def unknown_ops(self) -> list:
        """Ops the method's trace had no rule for, whose dims it left unpruned."""
        return []

    @property
    def selections(self) -> list[str]:
        """Ops in the method's trace that choose elements by their order (``topk``,
        ``argmax`` …), where they are: the check runs in float64 when there are any."""
        return []
