"""prunekit: structured pruning for PyTorch models.

    import prunekit as pk
    result = pk.prune(model, example_inputs, pk.FilterPruning(ratio=0.5, criterion="l1"))
    report = pk.verify(original, example_inputs, result.plan)
    pk.save(model, "pruned/", result.plan); pk.load(fresh_model, "pruned/")

The folders are the pipeline, in the order a prune runs: ``graph`` (trace the model, couple
its tensors into groups) → ``candidates`` (what can go: channel groups, layers) →
``importance`` (criteria) → ``selection`` (how many each group keeps, and which, within a
budget) → ``plan`` (kept indices, plain data) → ``surgery`` (apply the plan) → ``checks``
(verify it) → ``recover`` (re-fit, distil) → ``export`` (checkpoints, deployment formats).
``methods`` say which stages each method runs; ``api`` (in memory) and ``streaming`` (block
by block) orchestrate them; ``workflows`` (iterative, sensitivity, compare) and ``cli`` sit on
top; ``adapters`` hold what is particular to Hugging Face and Ultralytics; ``core`` and
``measure`` are the ground every stage stands on.
"""

# Hugging Face's adapters register themselves: its config upkeep, and how pk.load reads its
# checkpoints' names
from .adapters.hf import config as _hf_config  # noqa: F401
from .adapters.hf import conversion as _hf_conversion  # noqa: F401
from .adapters.hf.pruners import TransformerHeadPruner, TransformerLayerPruner, head_importance
from .adapters.hf.samples import sample_text
from .api import PruneResult, prune
from .candidates.layers import find_layer_candidates
from .checks import VerifyReport, verify
from .cli.model_sources import register_model_source
from .core.batches import Batch
from .core.distributed import rank_share
from .core.progress import Step
from .errors import ConfigError, PlanError, PruneError, TraceError, UnsupportedOpError
from .export.checked import ExportReport, export
from .export.formats import register_export_format
from .export.saving import load, save
from .graph import rules
from .graph.dependency import DependencyGraph, Group
from .graph.rules import register_rule
from .importance import (
    ChannelView,
    DataCriterion,
    WeightCriterion,
    criterion_names,
    register_criterion,
)
from .importance.layers import (
    LayerCriterion,
    LayerScore,
    find_redundant_layers,
    layer_importance,
)
from .measure.latency import Speedup, Timing, compare_latency
from .measure.model import Measurement, measure
from .methods import (
    ChannelPruning,
    FilterPruning,
    GroupPruning,
    HeadPruning,
    HiddenPruning,
    LayerPruning,
    PruneContext,
    PruningMethod,
    WidthPruning,
)
from .plan import Plan
from .recover import Distillation, DistillResult, distill
from .surgery.apply import apply_plan
from .surgery.configs import register_config_updater
from .surgery.fusion import FusionReport, fuse
from .surgery.handlers import register_handler
from .workflows.allocation import Allocation, allocate, decoder_dimensions
from .workflows.compare import Comparison, compare
from .workflows.iterative import History, iterative_prune
from .workflows.sensitivity import Sensitivity, sensitivity

__version__ = "0.2.0"


def __getattr__(name: str):
    # streamed pruning needs transformers; importing prunekit does not
    if name in ("prune_streamed", "StreamedResult"):
        from .streaming import orchestrator as streaming
        return getattr(streaming, name)
    raise AttributeError(f"module 'prunekit' has no attribute {name!r}")

# prune_streamed and StreamedResult (which need transformers) are left out of ``import *``,
# which would otherwise fail where transformers is not installed
__all__ = [
    "Allocation", "allocate", "decoder_dimensions",
    "Batch", "ChannelPruning", "ChannelView", "Comparison", "ConfigError", "DataCriterion",
    "DependencyGraph", "DistillResult", "Distillation", "ExportReport", "FilterPruning", "FusionReport", "Group", "GroupPruning", "HeadPruning", "HiddenPruning",
    "History", "LayerCriterion", "LayerPruning", "LayerScore", "Measurement", "Plan",
    "PlanError", "PruneContext", "PruneError", "PruneResult", "PruningMethod", "Sensitivity",
    "Speedup", "Step", "Timing", "TraceError", "TransformerHeadPruner", "TransformerLayerPruner", "UnsupportedOpError",
    "VerifyReport", "WeightCriterion", "WidthPruning", "apply_plan", "compare", "compare_latency",
    "criterion_names", "distill", "export", "fuse",
    "find_layer_candidates", "find_redundant_layers", "head_importance", "iterative_prune",
    "layer_importance", "load", "measure", "prune", "rank_share", "register_config_updater",
    "register_criterion", "register_export_format", "register_handler", "register_model_source",
    "register_rule", "rules", "sample_text", "save", "sensitivity", "verify",
]
