"""Coupling rules, one file per op family: for each torch op, how its output dims relate to
its input dims (see ``base.py`` for what a rule is and how to register your own)."""

from . import (  # noqa: F401  (register the rules)
    attention,
    convolution,
    elementwise,
    indexing,
    linear,
    norms,
    recurrent,
    reductions,
    reshape,
)
from .base import RULES, broadcast, register_rule, rule
from .elementwise import pointwise
from .reductions import is_layer_norm
from .reshape import FUSED_PER_HEAD, HEAD_COUNT, HEAD_SIZES

__all__ = ["FUSED_PER_HEAD", "HEAD_COUNT", "HEAD_SIZES", "RULES", "broadcast", "is_layer_norm",
           "pointwise", "register_rule", "rule"]
