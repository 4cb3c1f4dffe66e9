"""Weight-magnitude criteria (L1, L2) and the random baseline."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .base import ChannelView, WeightCriterion


@dataclass(frozen=True)
class Magnitude(WeightCriterion):
    """The p-norm of each channel's weights, summed over the members shown."""

    p: int = 1

    def score(self, views: list[ChannelView], generator: torch.Generator) -> torch.Tensor:
        total = torch.zeros(views[0].matrix.shape[0], dtype=torch.float64)
        for view in views:
            # float32 norms are several times faster and rank channels just as well
            total += torch.linalg.vector_norm(view.matrix.float(), ord=self.p, dim=1).double()
        return total


@dataclass(frozen=True)
class NormScale(WeightCriterion):
    """Network Slimming (Liu et al. 2017): |scale| of the group's normalisation layers, summed.

    Groups without a normalisation layer are ranked by their weights' L1 norm instead.
    """

    reads_role = "norm"  # shown the group's normalisation layers

    def score(self, views: list[ChannelView], generator: torch.Generator) -> torch.Tensor:
        scales = [v.matrix for v in views
                  if v.role == "norm" and v.member.split("[")[0].endswith("weight")]
        if not scales:
            return Magnitude(p=1).score(views, generator)
        return sum(s.double().abs().sum(dim=1) for s in scales)


@dataclass(frozen=True)
class RandomScore(WeightCriterion):
    """Random scores: the baseline every informed criterion should beat."""

    def score(self, views: list[ChannelView], generator: torch.Generator) -> torch.Tensor:
        return torch.rand(views[0].matrix.shape[0], generator=generator, dtype=torch.float64)
