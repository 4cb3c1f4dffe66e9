"""Importance criteria: each scores a group's channels (or a layer's heads); higher means
more important. The built-in ones are registered here; ``pk.register_criterion`` adds yours.

Weight criteria see a layer-agnostic view of the group's weights; data criteria read
activations or gradients over the batches passed as ``data=``.
"""

from .activation import ActivationStatistic
from .base import ChannelView, DataCriterion, WeightCriterion
from .fluctuation import ChannelFluctuation, HeadFluctuation
from .fpgm import GeometricMedianDistance
from .heads import AttentionEntropy, HeadAblation, HeadGradient, HeadReconstruction
from .magnitude import Magnitude, NormScale, RandomScore
from .reconstruction import ChannelReconstruction
from .registry import (
    CriterionEntry,
    criterion_names,
    get_criterion,
    register_criterion,
    streaming_names,  # noqa: F401  (what streamed pruning can use)
)

_WEIGHTS = ("channels", "heads")
register_criterion("l1", Magnitude(p=1), scores=_WEIGHTS, streams=True, summary="L1 norm of the weights")
register_criterion("l2", Magnitude(p=2), scores=_WEIGHTS, streams=True, summary="L2 norm of the weights")
register_criterion("fpgm", GeometricMedianDistance(), scores=_WEIGHTS, streams=True,
                   summary="distance to the geometric median (He et al. 2019)")
register_criterion("bn_scale", NormScale(), summary="|BatchNorm scale| (Network Slimming)")
register_criterion("apoz", ActivationStatistic("apoz"), streams=True,
                   summary="average percentage of zeros after the activation (data)")
register_criterion("mean_activation", ActivationStatistic("mean_activation"), streams=True,
                   summary="mean |activation| (data)")
register_criterion("taylor", ActivationStatistic("taylor"),
                   summary="|activation × gradient| per sample (Molchanov et al.; data)")
register_criterion("random", RandomScore(), scores=_WEIGHTS, streams=True, summary="random: the baseline")
# each score is a fraction of its consumers' output variance, but the groups it cannot score
# are ranked by their weights' norms, on another scale: global ranking divides by group means
register_criterion("reconstruction", ChannelReconstruction(), streams=True,
                   summary="what a least-squares re-fit of the layers reading the channel "
                           "cannot make up for without it, channels removed greedily (data)")
register_criterion("fluctuation", ChannelFluctuation(),
                   summary="variance of the channel's input to the layers reading it × their "
                           "weights' squared norm (FLAP; data)")
register_criterion("gradient", HeadGradient(), scores="heads",
                   summary="|dL/d head mask| (Michel et al. 2019; data)")
# on heads, Taylor's first-order loss change is exactly the head-mask gradient
register_criterion("taylor", HeadGradient(), scores="heads",
                   summary="the same as 'gradient' on heads (data)")
register_criterion("fluctuation", HeadFluctuation(), scores="heads",
                   summary="variance of the head's channels entering the output projection × "
                           "their weights' squared norm (FLAP; data)")
register_criterion("entropy", AttentionEntropy(), scores="heads",
                   summary="focus of each head's attention (data)")
# every score is the same output's distance, so heads of different layers compare as they are
register_criterion("output", HeadAblation(), scores="heads", comparable=True,
                   summary="output change with the head alone removed (data)")
# every score is a fraction of its own layer's projection output, the same scale everywhere
register_criterion("reconstruction", HeadReconstruction(), scores="heads", comparable=True,
                   streams=True,
                   summary="what a least-squares re-fit of the output projection cannot make "
                           "up for without the head, heads removed greedily (data)")

__all__ = ["ActivationStatistic", "AttentionEntropy", "ChannelFluctuation",
           "ChannelReconstruction", "ChannelView", "CriterionEntry",
           "DataCriterion", "GeometricMedianDistance", "HeadAblation", "HeadFluctuation",
           "HeadGradient", "HeadReconstruction",
           "Magnitude", "NormScale", "RandomScore", "WeightCriterion", "criterion_names",
           "get_criterion", "register_criterion"]
