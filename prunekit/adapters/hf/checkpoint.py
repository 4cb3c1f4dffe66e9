"""A Hugging Face model folder read one tensor at a time and written one shard at a time: what
streamed pruning reads from and writes to, so no more than a block's weights are in memory."""

from __future__ import annotations

import json
import math
import os
import shutil
from pathlib import Path
from typing import Iterator

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from ...errors import ConfigError
from ...export.saving import as_umask_allows, read_header, read_index, shard_path
from .memory import return_freed_memory

CONFIG_FILE = "config.json"
INDEX_FILE = "model.safetensors.index.json"
SINGLE_FILE = "model.safetensors"
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".msgpack", ".h5")
_DTYPE_BYTES = {"F64": 8, "I64": 8, "F32": 4, "I32": 4, "F16": 2, "BF16": 2, "I16": 2,
                "I8": 1, "U8": 1, "BOOL": 1, "F8_E4M3": 1, "F8_E5M2": 1}
class CheckpointReader:
    """The tensors of a model folder (``config.json`` and one or more ``*.safetensors``),
    read by name when asked for."""

    def __init__(self, folder: str | os.PathLike):
        self.folder = Path(folder)
        where = f"model folder {str(folder)!r}"
        if not self.folder.is_dir():
            raise ConfigError(f"{where}: no such folder; give a Hugging Face model folder "
                              f"(config.json and *.safetensors, as save_pretrained writes)")
        if not (self.folder / CONFIG_FILE).is_file():
            raise ConfigError(f"{where}: the folder has no config.json; streamed pruning reads "
                              f"a Hugging Face model folder, as save_pretrained writes it")
        self.files = self._weight_map()

    def _weight_map(self) -> dict[str, Path]:
        index = self.folder / INDEX_FILE
        if index.is_file():
            mapping = read_index(index)
            paths = {file: shard_path(self.folder, file, index) for file in set(mapping.values())}
            missing = sorted(file for file, path in paths.items() if not path.is_file())
            if missing:
                raise ConfigError(f"{index} names shards the folder does not have: "
                                  f"{', '.join(missing[:3])}")
            for path in paths.values():
                read_header(path)  # a cut-short shard is one line now, not a traceback later
            return {name: paths[file] for name, file in mapping.items()}
        shards = sorted(self.folder.glob("*.safetensors"))
        if not shards:
            others = sorted(p.name for p in self.folder.iterdir()
                            if p.suffix in WEIGHT_SUFFIXES)
            hint = (f" (it has {', '.join(others[:3])}: load the model and save it with "
                    f"save_pretrained, which writes safetensors)" if others else "")
            raise ConfigError(f"model folder {str(self.folder)!r} has no *.safetensors "
                              f"weights{hint}")
        files = {}
        for shard in shards:
            files.update({name: shard for name in read_header(shard)})
        return files

    def names(self) -> list[str]:
        return list(self.files)

    def tensor(self, name: str) -> torch.Tensor:
        with safe_open(self.files[name], framework="pt") as handle:
            return handle.get_tensor(name)

    def shape(self, name: str) -> list[int]:
        """A tensor's shape, read from the shard's header (the tensor is not loaded)."""
        with safe_open(self.files[name], framework="pt") as handle:
            return list(handle.get_slice(name).get_shape())

    def nbytes(self, name: str) -> int:
        with safe_open(self.files[name], framework="pt") as handle:
            view = handle.get_slice(name)
            return math.prod(view.get_shape()) * _DTYPE_BYTES.get(view.get_dtype(), 4)

    def headers(self) -> dict[str, tuple[list[int], str]]:
        """Every tensor's shape and dtype as the headers give them (``"BF16"``), each shard
        opened once and no tensor loaded."""
        found = {}
        for shard in sorted(set(self.files.values())):
            found.update(read_header(shard))
        return found

    def as_stored(self, tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Tensors named as this reader names them, as the checkpoint stores them: the same
        (a ``LoadedView`` converts them back)."""
        return tensors

    def under(self, prefix: str) -> dict[str, torch.Tensor]:
        """The tensors named ``prefix…``, keyed by the rest of their names."""
        return dict(self.under_lazily(prefix))

    def under_lazily(self, prefix: str) -> Iterator[tuple[str, torch.Tensor]]:
        """``under``, one tensor at a time: each is read when the loop reaches it."""
        for name in self.files:
            if name.startswith(prefix):
                yield name[len(prefix):], self.tensor(name)

    def other_files(self) -> list[Path]:
        """Everything in the folder but the weights and the config: tokenizer files, the
        generation config, a README …"""
        weights = set(self.files.values()) | {self.folder / INDEX_FILE}
        return [p for p in sorted(self.folder.iterdir())
                if p.is_file() and p not in weights and p.name != CONFIG_FILE
                and p.suffix not in WEIGHT_SUFFIXES]


class ShardWriter:
    """Writes tensors into ``model-0000k-of-0000N.safetensors`` shards of at most
    ``max_shard_bytes`` each (a tensor larger than that gets a shard of its own, written at
    once, so that two such tensors, embeddings and output layer, are never held together)
    and the index ``from_pretrained`` reads."""

    def __init__(self, folder: Path, max_shard_bytes: int = 2 << 30):
        self.folder = folder
        self.max_shard_bytes = max_shard_bytes
        self.pending: dict[str, torch.Tensor] = {}
        self.pending_bytes = 0
        self.shards: list[list[str]] = []  # tensor names per written shard
        self.total_bytes = 0

    def add(self, tensors: dict[str, torch.Tensor]) -> None:
        for name, tensor in tensors.items():
            size = tensor.numel() * tensor.element_size()
            if self.pending and self.pending_bytes + size > self.max_shard_bytes:
                self._flush()
            self.pending[name] = tensor.detach().contiguous()
            self.pending_bytes += size
            self.total_bytes += size
            if self.pending_bytes >= self.max_shard_bytes:
                self._flush()

    def reserve(self, nbytes: int) -> None:
        """Write out the pending shard if a tensor of ``nbytes`` would not fit in it: called
        before reading that tensor, so the two are never in memory together."""
        if self.pending and self.pending_bytes + nbytes > self.max_shard_bytes:
            self._flush()

    def _flush(self) -> None:
        if not self.pending:
            return
        save_file(self.pending, str(self._temporary(len(self.shards))), metadata={"format": "pt"})
        as_umask_allows(self._temporary(len(self.shards)))
        self.shards.append(list(self.pending))
        self.pending, self.pending_bytes = {}, 0
        return_freed_memory(collect=False)  # nothing cyclic was freed: trimming is enough

    def _temporary(self, index: int) -> Path:
        return self.folder / f"shard-{index:05d}.partial"

    def close(self) -> None:
        """Flush the last shard, name the shards and write the index."""
        self._flush()
        count = len(self.shards)
        weight_map = {}
        for index, names in enumerate(self.shards):
            final = (SINGLE_FILE if count == 1
                     else f"model-{index + 1:05d}-of-{count:05d}.safetensors")
            os.replace(self._temporary(index), self.folder / final)
            weight_map.update({name: final for name in names})
        if count > 1:
            (self.folder / INDEX_FILE).write_text(json.dumps(
                {"metadata": {"total_size": self.total_bytes}, "weight_map": weight_map},
                indent=1))


def copy_other_files(reader: CheckpointReader, folder: Path) -> None:
    for path in reader.other_files():
        shutil.copy2(path, folder / path.name)
