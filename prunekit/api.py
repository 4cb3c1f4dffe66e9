"""``pk.prune``: trace, group, rank, plan, apply, check — in one call."""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable

from torch import nn

from .apply import apply_plan
from .budget import layers_for_budget, ratio_for_budget
from .errors import ConfigError, PruneError
from .graph.dependency import DependencyGraph
from .hf_config import update_config
from .measure import Measurement, count_params, flops_and_shapes
from .layers import choose_layers, layer_importance, removal
from .methods import LayerPruning, _ChannelMethod
from .modes import evaluating
from .plan import Plan
from .recover.reconstruct import reconstruct
from .stacks import find_block_stack
from .fallback import SkippedGroup, plan_that_works, shapes_allowed
from .verify import DEFAULT_TOLERANCE, Counted
from .planner import candidate_groups, keep_from_scores, score_groups


@dataclass
class PruneResult:
    """What ``pk.prune`` did: the plan, the model's size before and after, the groups it
    left alone because pruning them broke the model (each with the error), and for a Hugging
    Face model whether its config describes the pruned model (``config_matches``: True means
    ``save_pretrained`` reloads it with plain ``from_pretrained``; False means save it with
    ``pk.save``; None for other models)."""

    plan: Plan
    before: Measurement
    after: Measurement
    skipped: list[SkippedGroup] = field(default_factory=list)
    config_matches: bool | None = None

    @property
    def param_reduction(self) -> float:
        return 1 - self.after.params / max(self.before.params, 1)

    @property
    def flop_reduction(self) -> float:
        return 1 - self.after.flops / max(self.before.flops, 1)

    def __str__(self) -> str:
        return (f"params {self.before.params:,} -> {self.after.params:,} "
                f"(-{self.param_reduction:.1%}), FLOPs {self.before.flops:,} -> "
                f"{self.after.flops:,} (-{self.flop_reduction:.1%})")


def prune(model: nn.Module, example_inputs: Any, method: _ChannelMethod | LayerPruning, *,
          ignore: Iterable[nn.Module] = (), data: Iterable | None = None,
          loss_fn: Callable[[Any, Any], Any] | None = None, strict: bool = False,
          check: bool = True, tolerance: float = DEFAULT_TOLERANCE) -> PruneResult:
    """Prune ``model`` in place with ``method`` and return the plan and before/after sizes.

    Args:
        model: the model to prune; changed in place, or left exactly as it was on error.
        example_inputs: a tensor (``model(x)``), tuple (``model(*x)``) or dict (``model(**x)``).
        method: ``FilterPruning(...)``, ``ChannelPruning(...)``, ``HeadPruning(...)`` or
            ``LayerPruning(...)``.
        ignore: modules whose dims stay as they are. The layers producing the model's outputs
            always keep their output size.
        data: an iterable of batches, for data-driven criteria (``"apoz"``,
            ``"mean_activation"``, ``"taylor"``): each batch is the model's inputs or an
            ``(inputs, targets)`` pair.
        loss_fn: ``loss_fn(outputs, batch) -> loss`` for ``"taylor"``; by default the
            cross-entropy of the outputs against the batch's targets.
        strict: raise on any op without a coupling rule instead of leaving its dims alone.
        check: verify, before changing the model, that the masked and pruned models agree
            within ``tolerance``; groups that break the model or the agreement are left
            unpruned and listed in ``result.skipped``. With ``check=False`` only "it still
            runs, with the same output shapes" is checked.

    Returns:
        A ``PruneResult`` with ``plan`` (JSON-able), ``before`` and ``after``.

    Example:
        >>> result = pk.prune(model, torch.randn(1, 3, 224, 224), pk.FilterPruning(0.5, "l1"))
        >>> print(result)
    """
    if isinstance(method, LayerPruning):
        return _prune_layers(model, example_inputs, method, data, loss_fn)
    if not isinstance(method, _ChannelMethod):
        raise ConfigError(f"method must be a pruning method such as pk.FilterPruning(...), "
                          f"got {type(method).__name__}")
    reconstructing = getattr(method, "reconstruct", False)
    if reconstructing and data is None:
        raise ConfigError(f"{type(method).__name__}(reconstruct=True) re-fits layers on "
                          f"calibration data; pass data=, an iterable of batches")
    graph = DependencyGraph(model, example_inputs, ignore=ignore, strict=strict,
                            normalised_prunable=method.prunes_hidden)
    if method.prunes_heads and not candidate_groups(graph, method):
        raise PruneError(f"{type(method).__name__}: the model has no attention heads the engine "
                         f"can find (a reshape into (heads, head_dim) in a module that keeps a "
                         f"head count); it was left unchanged")
    if method.prunes_hidden and not candidate_groups(graph, method):
        raise PruneError(f"{type(method).__name__}: the model has no hidden size the engine can "
                         f"narrow (channels that a LayerNorm or RMSNorm normalises, outside "
                         f"attention heads); it was left unchanged")
    original = copy.deepcopy(model) if reconstructing else None
    params_before = count_params(model)
    with evaluating(model):
        scores = score_groups(graph, method, data, loss_fn)
        ratio = ratio_for_budget(graph, model, example_inputs, method, scores)
        keep = keep_from_scores(graph, method, scores, ratio, dither=ratio is not None)
        # FLOPs and output shapes come from forward passes the checks make anyway
        counted: list[Counted] = [] if check else [flops_and_shapes(model, example_inputs)]
        plan, skipped, applied = plan_that_works(
            graph, model, example_inputs, keep, method.to_dict(),
            # a narrower hidden size cannot equal the masked model (see HiddenPruning)
            check_equivalence=check and not method.prunes_hidden,
            tolerance=tolerance, reference_shapes=counted[0][1] if counted else None,
            counted=counted, outputs_may_narrow=method.prunes_hidden)
        del graph  # holds references to the old tensors
        if not counted:  # nothing was tried
            counted.append(flops_and_shapes(model, example_inputs))
        flops_before, shapes = counted[0]
        before = Measurement(params_before, flops_before)
        if keep and plan.is_empty:
            reasons = "; ".join(f"{s.group}: {s.reason}" for s in skipped[:3])
            raise PruneError(f"no group could be pruned without breaking the model, so it was "
                             f"left unchanged ({reasons})")
        if applied:
            flops_after = counted[1][0]
        else:
            flops_after = _apply_checked(model, example_inputs, plan, shapes,
                                         may_narrow=method.prunes_hidden)
        after = Measurement(count_params(model), flops_after)
        if original is not None:
            reconstruct(original, model, plan, data)
    return PruneResult(plan, before, after, skipped, update_config(model))


def _prune_layers(model: nn.Module, example_inputs: Any, method: LayerPruning,
                  data: Iterable | None, loss_fn) -> PruneResult:
    with evaluating(model):
        scores = layer_importance(model, data, method.criterion, example_inputs, loss_fn,
                                  n=method.n)
        flops, shapes = flops_and_shapes(model, example_inputs)
        if method.flops_target is None:
            layers = choose_layers(scores, method.n, method.criterion)
        else:
            layers = layers_for_budget(model, example_inputs, choose_layers(scores, None),
                                        method.flops_target, flops)
        plan = removal(layers, find_block_stack(model))
        plan.method = method.to_dict()
        before = Measurement(count_params(model), flops)
        flops_after = _apply_checked(model, example_inputs, plan, shapes)
        after = Measurement(count_params(model), flops_after)
    return PruneResult(plan, before, after, config_matches=update_config(model))


def _apply_checked(model: nn.Module, example_inputs: Any, plan: Plan,
                   shapes: list[tuple[int, ...]], may_narrow: bool = False) -> int:
    """Apply the plan, undoing it unless the model still runs with the same output shapes
    (or, with ``may_narrow``, narrower ones); returns the pruned model's FLOPs."""
    flops_after: list[int] = []

    def still_runs(pruned: nn.Module) -> None:  # and counts its FLOPs on the way
        try:
            flops, new_shapes = flops_and_shapes(pruned, example_inputs)
        except Exception as error:
            raise PruneError(f"the pruned model no longer runs ({type(error).__name__}: "
                             f"{error}); the model was left unchanged") from error
        if not shapes_allowed(new_shapes, shapes, may_narrow):
            raise PruneError(f"pruning changed the output shapes {shapes} -> {new_shapes}; "
                             f"the model was left unchanged")
        flops_after.append(flops)

    apply_plan(model, plan, check=still_runs)
    return flops_after[0]
