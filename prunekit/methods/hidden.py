"""``HiddenPruning``: narrow a transformer's hidden size everywhere at once."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from ..checks.checks import Runs
from ..errors import ConfigError
from ..graph.dependency import DependencyGraph
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

    Example:
        >>> pk.prune(bert, inputs, pk.HiddenPruning(ratio=0.25, criterion="l2"))
    """

    streams: ClassVar[bool] = True

    cli_name: ClassVar[str] = "hidden"

    def streamed_stage(self):
        # which criteria stream is decided where the hidden size is streamed: it computes each
        # of them itself (prunekit.streaming.hidden), from weights read tensor by tensor or
        # from every place the hidden states are read
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
