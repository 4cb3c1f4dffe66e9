"""A small, plain trainer for classification over any iterable of (inputs, labels) batches."""

from __future__ import annotations

from typing import Callable, Iterable

import torch
from torch import nn

from ..core.calls import evaluating
from ..core.distributed import is_distributed, sum_across


def norm_scale_l1(model: nn.Module) -> torch.Tensor:
    """Σ |scale| over every BatchNorm: the Network Slimming penalty (Liu et al. 2017), which
    drives unneeded channels' scales towards zero before ``criterion="bn_scale"`` prunes."""
    scales = [m.weight.abs().sum() for m in model.modules()
              if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.weight is not None]
    return torch.stack(scales).sum() if scales else torch.zeros(())


def train_classifier(model: nn.Module, batches: Iterable, epochs: int = 1, lr: float = 1e-3,
                     weight_decay: float = 0.0,
                     on_epoch: Callable[[int, float], None] | None = None,
                     norm_sparsity: float = 0.0) -> list[float]:
    """Train with Adam and cross-entropy; returns the mean loss of each epoch.

    Args:
        model: the classifier; left in train mode.
        batches: re-iterable ``(inputs, labels)`` batches, e.g. a ``DataLoader``.
        epochs: passes over ``batches``.
        lr: Adam learning rate at the start; it decays to zero on a cosine schedule when
            ``batches`` has a length.
        on_epoch: called as ``on_epoch(epoch, mean_loss)`` after each epoch.
        norm_sparsity: weight of the L1 penalty on BatchNorm scales (``norm_scale_l1``),
            e.g. 1e-4, for sparsity training before ``bn_scale`` pruning.

    Launched by ``torchrun``, the model trains under DistributedDataParallel: ``batches`` is
    this process's share (a ``DistributedSampler``, or ``pk.rank_share``), gradients are
    averaged over the processes, and the losses returned are over all of their samples.
    """
    optimizer = torch.optim.Adam(model.parameters(), lr=lr, weight_decay=weight_decay)
    # cosine decay to zero over the run, so a short run still ends converged
    steps = max(1, epochs * len(batches)) if hasattr(batches, "__len__") else None
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, steps) if steps else None
    losses = []
    model.train()
    # parameters that get no gradient (a frozen branch) must not stall DDP's reduction
    forward = (nn.parallel.DistributedDataParallel(model, find_unused_parameters=True)
               if is_distributed() else model)
    for epoch in range(epochs):
        total, count = 0.0, 0
        for inputs, labels in batches:
            optimizer.zero_grad()
            loss = nn.functional.cross_entropy(forward(inputs), labels)
            objective = loss + norm_sparsity * norm_scale_l1(model) if norm_sparsity else loss
            objective.backward()
            optimizer.step()
            if schedule is not None:
                schedule.step()
            total, count = total + loss.item() * len(labels), count + len(labels)
        total, count = sum_across(total, count)
        losses.append(total / max(count, 1))
        if on_epoch is not None:
            on_epoch(epoch, losses[-1])
    return losses


@torch.no_grad()
def evaluate_accuracy(model: nn.Module, batches: Iterable) -> float:
    """Top-1 accuracy in [0, 1] over ``(inputs, labels)`` batches, in eval mode."""
    correct = total = 0
    with evaluating(model):
        for inputs, labels in batches:
            correct += (model(inputs).argmax(dim=1) == labels).sum().item()
            total += len(labels)
    return correct / max(total, 1)
