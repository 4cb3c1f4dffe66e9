"""prunekit: structured pruning for PyTorch models.

    import prunekit as pk
    result = pk.prune(model, example_inputs, pk.FilterPruning(ratio=0.5, criterion="l1"))
    report = pk.verify(original, example_inputs, result.plan)
    pk.save(model, "pruned/", result.plan); pk.load("pruned/", fresh_model)
"""

from .api import PruneResult, prune
from .apply import apply_plan
from .compare import Comparison, compare
from .errors import ConfigError, PlanError, PruneError, TraceError, UnsupportedOpError
from .graph.dependency import DependencyGraph, Group
from .io import load, save
from .iterative import History, iterative_prune
from .measure import Measurement, measure
from .layers import LayerScore, find_layer_candidates, find_redundant_layers, layer_importance
from .methods import ChannelPruning, FilterPruning, HeadPruning, HiddenPruning, LayerPruning
from .plan import Plan
from .pruners import TransformerHeadPruner, TransformerLayerPruner, head_importance
from .sensitivity import Sensitivity, sensitivity
from .verify import VerifyReport, verify

__version__ = "0.1.0"

__all__ = [
    "ChannelPruning", "Comparison", "ConfigError", "History", "Sensitivity", "compare",
    "iterative_prune", "sensitivity", "DependencyGraph", "FilterPruning", "Group", "HeadPruning",
    "HiddenPruning", "LayerPruning",
    "LayerScore", "Measurement", "Plan", "PlanError", "PruneError", "PruneResult", "TraceError",
    "UnsupportedOpError", "VerifyReport", "apply_plan", "find_layer_candidates",
    "find_redundant_layers", "layer_importance", "load", "measure", "prune", "save", "verify",
    "TransformerHeadPruner", "TransformerLayerPruner", "head_importance",
]
