"""A model's tensors as its checkpoint stores them and as the loaded model holds them.

Transformers converts some checkpoints when it loads them: a mixture-of-experts model stores
each expert's projections apart (``mlp.experts.0.gate_proj.weight`` …) and holds one fused
tensor per kind (``mlp.experts.gate_up_proj``, experts by intermediate size by hidden size);
some rename modules on the way (Mixtral's ``block_sparse_moe`` is its ``mlp``). Streamed
pruning reads the checkpoint through a ``LoadedView``, which names, shapes and reads its
tensors as ``from_pretrained`` would, and writes what it pruned back as ``save_pretrained``
would — with transformers' own rules for the model (``conversion_mapping``), so no
architecture is named here.
"""

from __future__ import annotations

import copy
from typing import Any, Iterator

import torch
from torch import nn

from ...errors import ConfigError
from ...export.saving import STORED_DTYPES, register_stored_names
from .checkpoint import CheckpointReader


class StoredNames:
    """Converts tensors of ``model`` (full names) between the checkpoint's form and the
    loaded model's. A stored tensor that already has one of the model's names is taken as
    it is: a rule written for names inside the blocks may match one outside them too
    (DeepSeek-V4 renames every ``.norm.`` to ``.kv_norm.``, its final norm included)."""

    def __init__(self, model: nn.Module):
        self.model = model
        self.rules = _rules(model)
        self.own = set(model.state_dict())
        self.renamings, self.converters = _split(self.rules) if self.rules else ([], [])

    def renamed(self, name: str) -> str:
        """The loaded name a stored tensor goes to (the first, where it goes to several)."""
        if self.rules is None or name in self.own:
            return name
        from transformers.core_model_loading import rename_source_key

        return rename_source_key(name, self.renamings, self.converters)[0]

    def as_loaded(self, tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The tensors as the loaded model holds them, from the tensors as stored; as they
        are where transformers converts nothing (or is too old to)."""
        if self.rules is None:
            return tensors
        from transformers.core_model_loading import (
            WeightRenaming,
            dot_natural_key,
            rename_source_key,
        )

        by_pattern = {pattern: c for c in self.converters for pattern in c.source_patterns}
        # each loaded name gathers what it is made of (every expert's projection), in
        # natural order (expert 2 before expert 10), as from_pretrained gathers them
        gathered: dict[str, Any] = {}
        for key in sorted(tensors, key=dot_natural_key):
            if key in self.own:
                loaded, pattern = key, None
            else:
                loaded, pattern = rename_source_key(key, self.renamings, self.converters)
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
        if self.rules is None:
            return tensors
        from transformers.core_model_loading import revert_weight_conversion

        return revert_weight_conversion(self.model, tensors)


class LoadedView:
    """A checkpoint read as the loaded model names and shapes its tensors: the interface of
    ``CheckpointReader`` (``names``, ``tensor``, ``shape`` …), each converted tensor read
    from the stored ones it is made of, and ``as_stored`` to turn pruned tensors back."""

    def __init__(self, stored: CheckpointReader, names: StoredNames):
        self.stored, self.converter = stored, names
        self.folder = stored.folder
        # which stored tensors make each loaded one, and its shape: converted on the meta
        # device from the shards' headers, so nothing is read
        headers = stored.headers()
        groups: dict[str, list[str]] = {}
        for name in stored.names():
            groups.setdefault(names.renamed(name), []).append(name)
        self.sources: dict[str, list[str]] = {}
        self.shapes: dict[str, list[int]] = {}
        for group in groups.values():
            empty = {name: torch.empty(headers[name][0], device="meta",
                                       dtype=STORED_DTYPES.get(headers[name][1], torch.float32))
                     for name in group}
            for loaded, tensor in names.as_loaded(empty).items():
                self.sources[loaded] = group
                self.shapes[loaded] = list(tensor.shape)

    def names(self) -> list[str]:
        return list(self.sources)

    def tensor(self, name: str) -> torch.Tensor:
        return self._read(self.sources[name])[name]

    def shape(self, name: str) -> list[int]:
        return self.shapes[name]

    def nbytes(self, name: str) -> int:
        """At most the bytes of the stored tensors it is made of."""
        return sum(self.stored.nbytes(source) for source in self.sources[name])

    def under(self, prefix: str) -> dict[str, torch.Tensor]:
        return dict(self.under_lazily(prefix))

    def under_lazily(self, prefix: str) -> Iterator[tuple[str, torch.Tensor]]:
        """The loaded tensors named ``prefix…``, keyed by the rest of their names; each group
        of stored tensors is read once, when the loop reaches it."""
        done: set[str] = set()
        for name, group in self.sources.items():
            if not name.startswith(prefix) or name in done:
                continue
            for loaded, tensor in self._read(group).items():
                done.add(loaded)
                if loaded.startswith(prefix):
                    yield loaded[len(prefix):], tensor

    def _read(self, group: list[str]) -> dict[str, torch.Tensor]:
        """The loaded tensors one group of stored tensors makes."""
        return self.converter.as_loaded({source: self.stored.tensor(source)
                                         for source in group})

    def other_files(self):
        return self.stored.other_files()

    def as_stored(self, tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Loaded tensors (full names) as the checkpoint stores them."""
        return self.converter.as_stored(tensors)


def loaded_view(stored: CheckpointReader, model: nn.Module) -> CheckpointReader | LoadedView:
    """``stored`` as ``model`` loads it: the reader itself where no tensor is converted."""
    names = StoredNames(model)
    if names.rules is None or all(names.renamed(n) == n for n in stored.names()):
        return stored
    try:
        return LoadedView(stored, names)
    except Exception as error:  # a rule that does not fit what is stored
        raise ConfigError(f"{stored.folder}: the checkpoint's tensors do not convert as "
                          f"transformers loads them ({type(error).__name__}: {error}); prune "
                          f"it in memory with pk.prune") from error


def _split(rules: list) -> tuple[list, list]:
    from transformers.core_model_loading import WeightConverter, WeightRenaming

    return ([r for r in rules if isinstance(r, WeightRenaming)],
            [r for r in rules if isinstance(r, WeightConverter)])


def _rules(model: nn.Module) -> list | None:
    """Transformers' conversion rules for ``model``; None without any, for a model that is
    not a transformers model, or before transformers 5.0."""
    try:
        from transformers import PreTrainedModel
        from transformers.conversion_mapping import get_model_conversion_mapping
    except ImportError:
        return None
    if not isinstance(model, PreTrainedModel):
        return None
    return get_model_conversion_mapping(model) or None


# pk.load reads a checkpoint whose names are stored apart as transformers does
register_stored_names(lambda model, tensors: StoredNames(model).as_loaded(tensors))
