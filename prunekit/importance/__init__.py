"""Importance criteria: each scores a group's channels; higher means more important.

Weight criteria see a layer-agnostic view of the group's weights; data-driven criteria
(``needs_data``) read activations over the batches passed as ``data=``.
"""

from .activation import ActivationStatistic
from .base import ChannelView, Criterion
from .fpgm import GeometricMedianDistance
from .heads import AttentionEntropy, HeadAblation, HeadGradient
from .magnitude import Magnitude, NormScale, RandomScore

CRITERIA: dict[str, Criterion] = {
    "l1": Magnitude(p=1),
    "l2": Magnitude(p=2),
    "fpgm": GeometricMedianDistance(),
    "bn_scale": NormScale(),
    "apoz": ActivationStatistic("apoz"),
    "mean_activation": ActivationStatistic("mean_activation"),
    "taylor": ActivationStatistic("taylor"),
    "random": RandomScore(),
    "gradient": HeadGradient(),
    "entropy": AttentionEntropy(),
    "output": HeadAblation(),
}

__all__ = ["CRITERIA", "ActivationStatistic", "AttentionEntropy", "ChannelView", "Criterion",
           "GeometricMedianDistance", "HeadAblation", "HeadGradient", "Magnitude", "NormScale",
           "RandomScore"]
