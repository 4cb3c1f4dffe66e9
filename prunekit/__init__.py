"""prunekit: structured pruning for PyTorch models.

    import prunekit as pk
    result = pk.prune(model, example_inputs, pk.FilterPruning(ratio=0.5, criterion="l1"))
    report = pk.verify(original, example_inputs, result.plan)
    pk.save(model, "pruned/", result.plan); pk.load("pruned/", fresh_model)

The pipeline, one package a stage: ``graph`` (trace, coupling rules, groups) →
``importance`` (criteria) → ``methods`` (what each method prunes and how) → ``planning``
(selection, budgets, plans) → ``surgery`` (apply, handlers) → ``checks`` (verify, bisection);
around it ``layers``, ``hf``, ``recover``, ``workflows`` and ``cli``.
"""

from .api import PruneResult, prune
from .batches import Batch
from .checks import VerifyReport, verify
from .deploy import ExportReport, export
from .distributed import rank_share
from .errors import ConfigError, PlanError, PruneError, TraceError, UnsupportedOpError
from .graph import rules
from .graph.dependency import DependencyGraph, Group
from .graph.rules import register_rule

# Hugging Face's adapters register themselves: its config upkeep, and how pk.load reads its
# checkpoints' names
from .hf import config as _hf_config  # noqa: F401
from .hf import conversion as _hf_conversion  # noqa: F401
from .hf.pruners import TransformerHeadPruner, TransformerLayerPruner, head_importance
from .importance import (
    ChannelView,
    DataCriterion,
    WeightCriterion,
    criterion_names,
    register_criterion,
)
from .io import load, save
from .latency import Speedup, Timing, compare_latency
from .layers import (
    LayerCriterion,
    LayerScore,
    find_layer_candidates,
    find_redundant_layers,
    layer_importance,
)
from .measure import Measurement, measure
from .methods import (
    ChannelPruning,
    FilterPruning,
    GroupPruning,
    HeadPruning,
    HiddenPruning,
    LayerPruning,
    PruneContext,
    PruningMethod,
)
from .plan import Plan
from .recover import Distillation, DistillResult, distill
from .surgery.apply import apply_plan
from .surgery.configs import register_config_updater
from .surgery.fusion import FusionReport, fuse
from .surgery.handlers import register_handler
from .workflows.compare import Comparison, compare
from .workflows.iterative import History, iterative_prune
from .workflows.sensitivity import Sensitivity, sensitivity

__version__ = "0.2.0"


def __getattr__(name: str):
    # streamed pruning needs transformers; importing prunekit does not
    if name in ("prune_streamed", "StreamedResult"):
        from .hf import streaming
        return getattr(streaming, name)
    raise AttributeError(f"module 'prunekit' has no attribute {name!r}")

# prune_streamed and StreamedResult (which need transformers) are left out of ``import *``,
# which would otherwise fail where transformers is not installed
__all__ = [
    "Batch", "ChannelPruning", "ChannelView", "Comparison", "ConfigError", "DataCriterion",
    "DependencyGraph", "DistillResult", "Distillation", "ExportReport", "FilterPruning", "FusionReport", "Group", "GroupPruning", "HeadPruning", "HiddenPruning",
    "History", "LayerCriterion", "LayerPruning", "LayerScore", "Measurement", "Plan",
    "PlanError", "PruneContext", "PruneError", "PruneResult", "PruningMethod", "Sensitivity",
    "Speedup", "Timing", "TraceError", "TransformerHeadPruner", "TransformerLayerPruner", "UnsupportedOpError",
    "VerifyReport", "WeightCriterion", "apply_plan", "compare", "compare_latency",
    "criterion_names", "distill", "export", "fuse",
    "find_layer_candidates", "find_redundant_layers", "head_importance", "iterative_prune",
    "layer_importance", "load", "measure", "prune", "rank_share", "register_config_updater",
    "register_criterion", "register_handler",
    "register_rule", "rules", "save", "sensitivity", "verify",
]
