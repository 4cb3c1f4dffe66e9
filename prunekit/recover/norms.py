"""Re-estimate normalisation statistics after pruning (no training).

Removing channels shifts the distribution every later BatchNorm sees, so its running mean
and variance — measured on the unpruned network — no longer fit, and one-shot accuracy
collapses even when the right channels were removed. A few forward passes over calibration
data put the statistics back; no weight changes.
"""

from __future__ import annotations

from typing import Iterable

import torch
from torch import nn

from ..core.batches import split_batch
from ..core.calls import call_model, evaluating
from ..core.distributed import sum_across


def recalibrate_norms(model: nn.Module, data: Iterable) -> int:
    """Recompute every BatchNorm's running statistics on ``data``; returns how many layers.

    Only the norms run in training mode (dropout and the rest stay in eval mode), and the
    statistics are a plain average over all batches.
    """
    norms = [m for m in model.modules()
             if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]
    if not norms:
        return 0
    momentum = {m: m.momentum for m in norms}
    try:
        with evaluating(model), torch.no_grad():
            for norm in norms:
                norm.reset_running_stats()
                norm.momentum = None  # cumulative average over the batches
                norm.train()
            for batch in data:
                call_model(model, split_batch(batch)[0])
        _average_across_processes(norms)
    finally:
        for norm, value in momentum.items():
            norm.momentum = value
    return len(norms)


def _average_across_processes(norms: list[nn.Module]) -> None:
    """Under torchrun, every process's statistics weighted by the batches it read, so all of
    them hold the same (no-op on one process)."""
    for norm in norms:
        batches = norm.num_batches_tracked.double()
        mean, variance, batches = sum_across(norm.running_mean * batches,
                                             norm.running_var * batches, batches)
        if batches > 0:
            norm.running_mean.copy_(mean / batches)
            norm.running_var.copy_(variance / batches)
