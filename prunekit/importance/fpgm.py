"""FPGM (He et al. 2019): filters nearest the layer's geometric median are the most
replaceable by the others, so they go first."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .base import ChannelView, WeightCriterion


@dataclass(frozen=True)
class GeometricMedianDistance(WeightCriterion):
    """Each channel's summed Euclidean distance to the layer's other channels, summed over
    the members shown; a small sum means the channel sits near the geometric median."""

    def score(self, views: list[ChannelView], generator: torch.Generator) -> torch.Tensor:
        total = torch.zeros(views[0].matrix.shape[0], dtype=torch.float64)
        for view in views:
            matrix = view.matrix.double()
            total += torch.cdist(matrix, matrix).sum(dim=1)
        return total
