"""A model's tensors as its checkpoint stores them and as the loaded model holds them.

Transformers converts some checkpoints when it loads them: a mixture-of-experts model stores
each expert's projections apart (``mlp.experts.0.gate_proj.weight`` …) and holds one fused
tensor per kind (``mlp.experts.gate_up_proj``, experts by intermediate size by hidden size);
some rename modules on the way (Mixtral's ``block_sparse_moe`` is its ``mlp``). Streamed
pruning reads a block's tensors as stored, converts them as ``from_pretrained`` would, prunes
the block, and converts it back as ``save_pretrained`` would — with transformers' own rules
for the model (``conversion_mapping``), so no architecture is named here.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import nn


class StoredNames:
    """Converts the tensors of one part of ``model`` (full names) between the checkpoint's
    form and the loaded model's."""

    def __init__(self, model: nn.Module):
        self.model = model

    def as_loaded(self, tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The tensors as the loaded model holds them, from the tensors as stored; as they
        are where transformers converts nothing (or is too old to)."""
        rules = _rules(self.model)
        if rules is None:
            return tensors
        from transformers.core_model_loading import (
            WeightConverter,
            WeightRenaming,
            dot_natural_key,
            rename_source_key,
        )

        renamings = [r for r in rules if isinstance(r, WeightRenaming)]
        converters = [r for r in rules if isinstance(r, WeightConverter)]
        by_pattern = {pattern: c for c in converters for pattern in c.source_patterns}
        # each loaded name gathers what it is made of (every expert's projection), in
        # natural order (expert 2 before expert 10), as from_pretrained gathers them
        gathered: dict[str, Any] = {}
        for key in sorted(tensors, key=dot_natural_key):
            loaded, pattern = rename_source_key(key, renamings, converters)
            if pattern is None:
                rule = gathered.setdefault(loaded, WeightRenaming(key, loaded))
                pattern = key
            else:
                rule = gathered.setdefault(loaded, copy.deepcopy(by_pattern[pattern]))
            rule.add_tensor(loaded, key, pattern, tensors[key])
        result = {}
        for loaded, rule in gathered.items():
            for name, value in rule.convert(loaded, model=self.model,
                                            config=self.model.config).items():
                result[name] = value[0] if isinstance(value, list) else value
        return result

    def as_stored(self, tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The tensors as ``save_pretrained`` would store them, from the loaded model's."""
        if _rules(self.model) is None:
            return tensors
        from transformers.core_model_loading import revert_weight_conversion

        return revert_weight_conversion(self.model, tensors)


def _rules(model: nn.Module) -> list | None:
    """Transformers' conversion rules for ``model``; None without any (or before 5.0)."""
    try:
        from transformers.conversion_mapping import get_model_conversion_mapping
    except ImportError:
        return None
    return get_model_conversion_mapping(model) or None
