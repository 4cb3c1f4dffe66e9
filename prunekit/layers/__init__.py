"""Layer and block pruning: candidates (what a network can lose) and criteria (how much it
needs each)."""

from .candidates import find_layer_candidates, removal
from .criteria import (
    LayerContext,
    LayerCriterion,
    LayerScore,
    choose_layers,
    find_redundant_layers,
    layer_importance,
)

__all__ = ["LayerContext", "LayerCriterion", "LayerScore", "choose_layers",
           "find_layer_candidates", "find_redundant_layers", "layer_importance", "removal"]
