"""The calibration hidden states a stream carries from block to block: in memory up to a
budget, the rest spilled to disk, so that the calibration set is not limited by memory
either."""

from __future__ import annotations

import itertools
import tempfile
from pathlib import Path
from typing import Iterator

import torch


class SpillFolder:
    """A temporary folder that the spilled hidden states of one stream go to, made when the
    first one is spilled and removed with everything in it by ``close``."""

    def __init__(self, parent: str | Path | None = None):
        self.parent = parent
        self._folder: tempfile.TemporaryDirectory | None = None
        self._names = itertools.count()
        self.bytes_written = 0

    def new_file(self) -> Path:
        if self._folder is None:
            self._folder = tempfile.TemporaryDirectory(prefix="prunekit-hidden-",
                                                       dir=self.parent)
        return Path(self._folder.name) / f"{next(self._names)}.pt"

    def close(self) -> None:
        if self._folder is not None:
            self._folder.cleanup()
            self._folder = None


class HiddenStates:
    """One block's hidden states, one tensor per calibration batch, in batch order.

    The first tensors are kept in memory while their bytes stay within ``budget`` (shared
    with the other ``HiddenStates`` of the stream alive at the same time, so each gets its
    share); the rest are written to ``spill`` and read back (memory-mapped) when asked for.
    """

    def __init__(self, budget: int, spill: SpillFolder):
        self.budget, self.spill = budget, spill
        self._items: list[torch.Tensor | Path] = []
        self._in_memory = 0

    def append(self, tensor: torch.Tensor) -> None:
        size = tensor.numel() * tensor.element_size()
        if self._in_memory + size <= self.budget:
            self._items.append(tensor)
            self._in_memory += size
            return
        path = self.spill.new_file()
        torch.save(tensor.contiguous(), path)
        self.spill.bytes_written += size
        self._items.append(path)

    def __len__(self) -> int:
        return len(self._items)

    def __getitem__(self, index: int) -> torch.Tensor:
        item = self._items[index]
        if isinstance(item, torch.Tensor):
            return item
        return torch.load(item, mmap=True, weights_only=True)

    def __iter__(self) -> Iterator[torch.Tensor]:
        return (self[i] for i in range(len(self)))

    def discard(self) -> None:
        """Drop these states (their files too): the next block no longer needs them."""
        for item in self._items:
            if isinstance(item, Path):
                item.unlink(missing_ok=True)
        self._items, self._in_memory = [], 0
