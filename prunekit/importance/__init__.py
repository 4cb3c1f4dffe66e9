"""Importance criteria: each scores a group's channels from a layer-agnostic view."""

from .base import ChannelView, Criterion
from .magnitude import Magnitude, RandomScore

CRITERIA: dict[str, Criterion] = {
    "l1": Magnitude(p=1),
    "l2": Magnitude(p=2),
    "random": RandomScore(),
}

__all__ = ["CRITERIA", "ChannelView", "Criterion", "Magnitude", "RandomScore"]
