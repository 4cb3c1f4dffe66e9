"""What a criterion sees: one matrix per member, rows are the group's channels."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import torch


@dataclass
class ChannelView:
    """One member of a group, seen along the pruned channels.

    ``matrix`` has one row per channel of the group and one column per weight that belongs to
    that channel in this member (kernel taps, the other layer's channels, repeated blocks …).
    """

    member: str
    role: str | None
    matrix: torch.Tensor  # (channels, features)


class Criterion(Protocol):
    def score(self, views: list[ChannelView], generator: torch.Generator) -> torch.Tensor:
        """One score per channel; higher means more important."""
        ...
