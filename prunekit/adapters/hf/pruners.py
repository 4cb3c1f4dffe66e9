"""Object-style pruners for transformers, as a textbook sketches them, on the engine.

``TransformerHeadPruner`` scores every attention head and removes heads physically;
``TransformerLayerPruner`` scores every block of the layer stack and removes blocks. Both
work on any model the engine can trace (Hugging Face BERT/GPT-2/Llama/…, timm ViT), keep the
modules' head counts and the config's sizes true, and return ``pk.prune``'s result, whose plan
saves and reloads with ``pk.save``/``pk.load``.

Example:
    >>> pruner = pk.TransformerHeadPruner(model, inputs, criterion="gradient")
    >>> scores = pruner.head_importance(batches)      # {attention layer: per-head scores}
    >>> pruner.prune_heads({"encoder.layer.0.attention": [3, 7]})
    >>> pk.TransformerLayerPruner(model, inputs).prune_layers(2, batches)
"""

from __future__ import annotations

from typing import Any, Iterable

import torch
from torch import nn

from ...api import PruneResult, prune
from ...importance.layers import LayerScore, layer_importance
from ...methods import HeadPruning, LayerPruning
from ...selection.channels import common_prefix


def head_importance(model: nn.Module, example_inputs: Any, data: Iterable | None = None,
                    criterion: str = "l1", loss_fn=None) -> dict[str, torch.Tensor]:
    """``{attention layer: one score per head}`` (higher = more important); the model is not
    changed. The layer names are the ones ``HeadPruning(heads=...)`` takes."""
    method = HeadPruning(0.0, criterion)
    graph, groups = method.traced_candidates(model, example_inputs)
    scores = method.score(graph, groups, list(data) if data is not None else None, loss_fn)
    return {common_prefix(group.modules()): scores[group.axis].detach().clone()
            for group in groups}


class TransformerHeadPruner:
    """Score attention heads and remove them (see the module docstring)."""

    def __init__(self, model: nn.Module, example_inputs: Any, criterion: str = "gradient") -> None:
        HeadPruning(0.0, criterion)  # a bad criterion fails here, not after scoring
        self.model, self.example_inputs, self.criterion = model, example_inputs, criterion

    def head_importance(self, data: Iterable | None = None) -> dict[str, torch.Tensor]:
        return head_importance(self.model, self.example_inputs, data, self.criterion)

    def prune_heads(self, heads: dict[str, list[int]]) -> PruneResult:
        """Remove exactly these heads: ``{attention layer: [head indices]}``."""
        return prune(self.model, self.example_inputs, HeadPruning(heads=heads))

    def prune(self, ratio: float, data: Iterable | None = None,
              reconstruct: bool = False) -> PruneResult:
        """Remove the lowest-scoring ``ratio`` of every layer's heads."""
        method = HeadPruning(ratio, self.criterion, reconstruct=reconstruct)
        return prune(self.model, self.example_inputs, method, data=data)


class TransformerLayerPruner:
    """Score the blocks of the layer stack and remove them (see the module docstring)."""

    def __init__(self, model: nn.Module, example_inputs: Any, criterion: str = "influence") -> None:
        LayerPruning(1, criterion)  # a bad criterion fails here
        self.model, self.example_inputs, self.criterion = model, example_inputs, criterion

    def layer_importance(self, data: Iterable, n: int = 1) -> list[LayerScore]:
        return layer_importance(self.model, data, self.criterion, self.example_inputs, n=n)

    def prune_layers(self, n: int, data: Iterable | None = None) -> PruneResult:
        """Remove the ``n`` least important blocks (a window of ``n`` for ``"angular"``)."""
        return prune(self.model, self.example_inputs, LayerPruning(n, self.criterion), data=data)
