"""``LayerPruning``: remove whole layers or blocks."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

from ..candidates.layers import find_layer_candidates, removal
from ..checks.checks import BlocksBypassed, Runs
from ..core.arguments import check_whole
from ..errors import ConfigError
from ..graph.dependency import resolve_ignored
from ..importance import get_criterion
from ..importance.layers import choose_layers, layer_importance
from ..importance.registry import streaming_names
from ..measure.model import count_flops
from ..plan import Plan
from ..selection.budgets import shortest_prefix_for_budget
from ..surgery.stacks import find_block_stack
from .base import Preview, PreviewRow, Proposal, PruningMethod, Trial, check_ratio


@dataclass
class LayerProposal(Proposal):
    """Layers to remove; a piece is one layer."""

    layers: list[str]
    stack: str | None
    method: dict[str, Any]

    @property
    def pieces(self) -> list[str]:
        return list(self.layers)

    def describe(self, piece: str) -> str:
        return f"layer {piece}"

    def plan(self, pieces: list[str]) -> Plan:
        plan = removal(pieces, self.stack)
        plan.method = self.method
        return plan


@dataclass
class LayerPruning(PruningMethod):
    """Remove ``n`` whole layers or blocks, the least important by ``criterion``
    (``pk.criterion_names("layers")``: ``"influence"``, the default, reads no labels;
    ``"loss"``, ``"accuracy"``, ``"output"``, ``"angular"``, ``"last"`` …; see
    ``prunekit.importance.layers``).

    With ``flops_target``, as many layers as it takes (least important first) to remove that
    fraction of FLOPs, or every candidate if even that is not enough. Modules given to
    ``pk.prune(ignore=...)`` and the blocks holding them are never removed. The check: the
    named blocks are bypassed, every other parameter is unchanged (exactly, so ``tolerance``
    does not apply) and the output shapes are the same. ``strict=True`` is refused: nothing
    is traced op by op.

    Example:
        >>> pk.prune(model, x, pk.LayerPruning(n=2, criterion="influence"), data=batches)
    """

    streams: ClassVar[bool] = True

    n: int = 1
    criterion: str = "influence"  # the same default on every surface: it needs no labels
    flops_target: float | None = None

    cli_name: ClassVar[str] = "layers"

    def streamed_stage(self):
        if self.flops_target is not None:
            raise ConfigError("streamed LayerPruning takes n (a number of layers), not "
                              "flops_target")
        streams = streaming_names("layers")
        if self.criterion not in streams:
            raise ConfigError(f"streamed LayerPruning.criterion {self.criterion!r} needs the "
                              f"whole model's output; choose one of {sorted(streams)}")
        return "depth"

    def __post_init__(self) -> None:
        check_whole(self.n, "LayerPruning.n")
        if self.flops_target is not None:
            check_ratio(self.flops_target, "LayerPruning.flops_target")
        get_criterion(self.criterion, "layers", "LayerPruning.criterion")

    def propose(self, model, example_inputs, context):
        if context.strict:
            raise ConfigError("LayerPruning removes whole layers without tracing ops, so "
                              "strict= does not apply; leave it False")
        scores = layer_importance(model, context.data, self.criterion, example_inputs,
                                  context.loss_fn, n=self.n)
        ignored = resolve_ignored(model, context.ignore)  # the modules and all inside them
        scores = [s for s in scores if s.name not in ignored
                  and not any(name.startswith(s.name + ".") for name in ignored)]
        stack = find_block_stack(model)
        window = get_criterion(self.criterion, "layers", "").criterion.window
        if self.flops_target is None:
            layers = choose_layers(scores, self.n, window)
        else:
            layers = shortest_prefix_for_budget(
                model, example_inputs, choose_layers(scores, None),
                lambda names: removal(names, stack), self.flops_target,
                count_flops(model, example_inputs))
        return LayerProposal(layers, stack, self.to_dict())

    def check(self, verify, tolerance):
        return BlocksBypassed() if verify else Runs()

    def step(self, step, steps, removed):
        """``n`` layers spread over the steps (a step may remove none); a FLOPs target as for
        channel methods."""
        check_whole(steps, "steps")
        if self.flops_target is not None:
            goal, done = self.flops_target * step / steps, removed.get("flops", 0.0)
            if goal <= done:
                return None
            return LayerPruning(criterion=self.criterion,
                                flops_target=1 - (1 - goal) / (1 - done))
        now = round(self.n * step / steps) - round(self.n * (step - 1) / steps)
        return LayerPruning(now, self.criterion) if now else None

    def trials(self, model, example_inputs, ratios, context):
        stack = find_block_stack(model)
        modules = dict(model.named_modules())
        for name in find_layer_candidates(model, example_inputs):
            size = sum(p.numel() for p in modules[name].parameters())
            yield Trial(name, size, 1.0, removal([name], stack))

    def preview(self, model, example_inputs):
        modules = dict(model.named_modules())
        return Preview([PreviewRow(name, sum(p.numel() for p in modules[name].parameters()), 0,
                                   type(modules[name]).__name__)
                        for name in find_layer_candidates(model, example_inputs)])

    def summary(self):
        target = (f"flops_target={self.flops_target}" if self.flops_target is not None
                  else f"n={self.n}")
        return f"LayerPruning({target}, criterion={self.criterion!r})"

