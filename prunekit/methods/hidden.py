"""``HiddenPruning``: narrow a transformer's hidden size everywhere at once."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from ..checks.checks import Runs
from ..core.batches import split_batch
from ..core.progress import Step
from ..errors import ConfigError, PruneError
from ..graph.dependency import DependencyGraph
from ..surgery.rotation import rotation
from .groups import GroupPruning


@dataclass
class HiddenPruning(GroupPruning):
    """Narrow a transformer's residual stream (its hidden size): every embedding, norm and
    projection that reads or writes it loses the same channels, in every layer.

    Unlike the other methods this one is not exact: a LayerNorm or RMSNorm averages over all
    the hidden channels, so the pruned model cannot compute what the original computed with
    those channels zeroed. ``pk.prune`` checks that the pruned model runs with the same or
    narrower output shapes, not that its outputs agree; expect to fine-tune or distil
    afterwards. Channels are ranked over every member's weights (``"l1"``, ``"l2"``,
    ``"fpgm"``, ``"random"``, or the activation criteria). A config whose ``hidden_size`` can
    describe the result is updated.

    With ``rotate=True`` (SliceGPT's idea; ``prunekit.surgery.rotation``) the residual stream
    is first rotated onto its principal directions on ``data``: each norm's scale is folded
    into the layers reading it, and the rotated model is checked equal to the original
    before anything is cut. The directions with the least variance are then removed, and
    each norm's scale makes up for the energy they carried. It needs RMSNorm-style norms
    (Llama, Mistral, Qwen …), unties an embedding tied to the output layer, and ignores
    ``criterion``.

    Example:
        >>> pk.prune(bert, inputs, pk.HiddenPruning(ratio=0.25, criterion="l2"))
        >>> pk.prune(llama, inputs, pk.HiddenPruning(0.25, rotate=True), data=batches)
    """

    rotate: bool = False

    streams: ClassVar[bool] = True

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.rotate and self.criterion != "l1":  # (l1: the default, left as it is)
            raise ConfigError(f"HiddenPruning(rotate=True) ranks the principal directions by "
                              f"their variance; leave criterion out (got {self.criterion!r})")
        if self.rotate and self.bias_compensation:
            raise ConfigError("HiddenPruning(rotate=True) cuts the directions of least "
                              "variance, not channels with a mean to give back; leave "
                              "bias_compensation out")

    cli_name: ClassVar[str] = "hidden"

    def streamed_stage(self):
        # which criteria stream is decided where the hidden size is streamed: it computes each
        # of them itself (prunekit.streaming.hidden), from weights read tensor by tensor or
        # from every place the hidden states are read
        if self.rotate or self.bias_compensation:
            option = "rotate" if self.rotate else "bias_compensation"
            raise ConfigError(f"HiddenPruning({option}=True) needs the model in memory "
                              f"(pk.prune)")
        if self.budget() is not None or self.overrides:
            raise ConfigError("streamed HiddenPruning removes ratio= of the hidden size; "
                              "budgets and overrides need the model in memory (pk.prune)")
        return "hidden"

    def graph(self, model, example_inputs, ignore=(), strict=False):
        # the dims a LayerNorm/RMSNorm normalises stay prunable, and so do the model outputs
        return DependencyGraph(model, example_inputs, ignore=ignore, strict=strict,
                               normalised_prunable=True)

    def candidates(self, graph):
        return graph.hidden_groups()

    def nothing_to_prune(self):
        return ("HiddenPruning: the model has no hidden size the engine can narrow (channels "
                "that a LayerNorm or RMSNorm normalises, outside attention heads); it was left "
                "unchanged")

    def check(self, verify, tolerance):
        # a narrower hidden size cannot equal the masked model: check that it runs
        return Runs(may_narrow=True)

    def untied(self, graph):
        if not self.rotate:
            return []
        # an output layer tied to the embedding reads what it writes, rotated apart
        return [name for group in self.candidates(graph) for member in group.members
                for name in member.slot.names[1:]]

    def summary(self):
        if not self.rotate:
            return super().summary()
        budget = self.budget()
        target = f"{budget[0]}_target={budget[1]}" if budget else f"ratio={self.ratio}"
        return f"HiddenPruning({target}, rotate=True)"

    def score(self, graph, groups, data=None, loss_fn=None):
        if not self.rotate:
            return super().score(graph, groups, data, loss_fn)
        if len(groups) != 1:
            raise PruneError(f"HiddenPruning(rotate=True) rotates one residual stream; this "
                             f"model has {len(groups)}")
        if not data:
            raise ConfigError("HiddenPruning(rotate=True) rotates by the principal directions "
                              "of calibration activations; pass data=, batches of inputs")
        # after the rotation, channel i is the i-th principal direction: keep the first ones
        return {groups[0].axis: torch.arange(groups[0].size, 0, -1, dtype=torch.float64)}

    def recovery(self, model, context):
        return self._rotation(model, context) if self.rotate else super().recovery(model, context)

    def _rotation(self, model, context):
        """Slices the rotated stream: the rotation is found (and checked) on the unpruned
        model now, and written into the pruned one by the directions its plan keeps."""
        batches = [split_batch(batch)[0] for batch in context.data]
        context.progress(Step("rotating the hidden states", 0, 1))
        graph = self.graph(model, batches[0], context.ignore, context.strict)
        group = self.candidates(graph)[0]
        rotated = rotation(model, group, batches[0], batches)
        del graph, group  # the trace holds the unpruned tensors
        context.progress(Step("rotating the hidden states", 1, 1, rotated.checked))

        def cut(pruned, plan):
            kept = next((plan.tensors[name][dim] for name, dim in rotated.dims.items()
                         if dim in plan.tensors.get(name, {})), None)
            if kept is not None:
                rotated.slice(pruned, torch.tensor(kept))
        return cut
