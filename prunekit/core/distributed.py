"""Running on several processes with ``torch.distributed`` (launched by ``torchrun``).

Each process calibrates on its own share of the data. Data-driven criteria keep running sums
(a statistic summed over batches, and how many batches or samples went in); ``sum_across``
adds those sums over every process before they become scores, so every process ranks the
same totals and derives the same plan as one process given all the data would (up to the
order of floating-point additions). Without an initialised process group of two or more
processes every function here is a no-op, so single-process code pays nothing.

Every process must reach a collective in the same order, so the criteria call
``sum_across`` once, after their loop over the data, never per batch.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any, Iterable, Iterator

import torch
import torch.distributed as dist

from ..errors import ConfigError


def is_distributed() -> bool:
    """Whether this process is one of two or more in an initialised process group."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def is_main_process() -> bool:
    """Rank 0, or the only process: the one that writes files and prints."""
    return rank() == 0


def barrier() -> None:
    if is_distributed():
        dist.barrier()


def collective_device() -> torch.device:
    """Where tensors must be for a collective: NCCL reduces GPU tensors only, gloo CPU ones."""
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def sum_across(*values: torch.Tensor | float | int) -> list[Any]:
    """Each value summed over every process, in the same types and on the same devices
    (floats stay floats).

    Tensors are reduced in float64 so the order in which processes are added changes the
    last bits only; every process gets the same result.
    """
    if not is_distributed():
        return list(values)
    summed = []
    device = collective_device()
    for value in values:
        tensor = torch.as_tensor(value, dtype=torch.float64).to(device, copy=True)
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
        if isinstance(value, torch.Tensor):
            summed.append(tensor.to(value.device, value.dtype))
        elif isinstance(value, int) and not isinstance(value, bool):
            summed.append(int(round(tensor.item())))
        else:
            summed.append(tensor.item())
    return summed


def means_across(sums: list[float], counts: list[int]) -> list[float]:
    """``sums[i] / counts[i]`` over every process's sums and counts; infinity where no
    process counted anything (nothing was measured there)."""
    totals, seen = sum_across(torch.tensor(sums, dtype=torch.float64), torch.tensor(counts))
    return [totals[i].item() / seen[i].item() if seen[i] else math.inf for i in range(len(sums))]


def require_data_everywhere(count: int, who: str) -> None:
    """A ``ConfigError`` on every process when any process saw no batches: its statistics
    would have no shape to add, and a process that stopped alone would leave the others
    waiting."""
    seen = torch.tensor([count], dtype=torch.float64)
    if is_distributed():
        seen = seen.to(collective_device())
        dist.all_reduce(seen, op=dist.ReduceOp.MIN)
    if seen.item() == 0:
        where = " on at least one process; give every process a share" if is_distributed() else ""
        raise ConfigError(f"{who}: data= gave no batches{where}")


def rank_share(batches: Iterable) -> "RankShare":
    """This process's rows of every batch: each tensor in a batch (nested in tuples, lists and
    dicts) split along its first dim into one contiguous part per process.

    Every process iterating the same global batches through ``rank_share`` sees disjoint
    parts that together are the whole batch, which is how a test or a script without a
    ``DistributedSampler`` gives each process its share. Batches whose first dim does not
    divide by the number of processes are refused, since unequal parts would weight the
    processes' gradients unequally. One process: the batches unchanged. Re-iterable (and
    sized) when ``batches`` is, so it serves several epochs.
    """
    return RankShare(batches)


class RankShare:
    """``rank_share``'s view of the batches."""

    def __init__(self, batches: Iterable):
        self.batches = batches

    def __iter__(self) -> Iterator[Any]:
        for batch in self.batches:
            yield _share(batch) if is_distributed() else batch

    def __len__(self) -> int:
        return len(self.batches)  # type: ignore[arg-type]


def _share(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        if value.dim() == 0:
            return value
        if value.shape[0] % world_size():
            raise ConfigError(f"rank_share: a batch of {value.shape[0]} rows does not split "
                              f"evenly over {world_size()} processes; use a batch size that "
                              f"is a multiple of the number of processes")
        return value.chunk(world_size())[rank()]
    if isinstance(value, Mapping):  # a dict, or a tokenizer's BatchEncoding
        return {key: _share(item) for key, item in value.items()}
    if isinstance(value, tuple) and hasattr(value, "_fields"):  # a named tuple
        return type(value)(*(_share(item) for item in value))
    if isinstance(value, (tuple, list)):
        return type(value)(_share(item) for item in value)
    return value
