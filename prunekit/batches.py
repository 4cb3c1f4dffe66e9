"""What a batch is, for everything that reads calibration or evaluation data.

A batch is the model's inputs (called as ``pk.prune`` calls example inputs) or an
``(inputs, targets)`` pair. Losses come from the user's ``loss_fn(outputs, batch)``, else
the model's own (a Hugging Face model given ``labels``), else cross-entropy of the outputs
against the targets.
"""

from __future__ import annotations

from typing import Any, Callable

import torch
from torch.nn import functional as F

from .errors import ConfigError

LossFn = Callable[[Any, Any], torch.Tensor]


def split_batch(batch: Any) -> tuple[Any, Any]:
    """``(inputs, targets)`` or ``[inputs, targets]`` → both; anything else is inputs only."""
    if isinstance(batch, (tuple, list)) and len(batch) == 2:
        return batch[0], batch[1]
    return batch, None


def model_loss(outputs: Any) -> torch.Tensor | None:
    """The loss a model computed itself (a Hugging Face model given ``labels``), if any."""
    loss = outputs.get("loss") if isinstance(outputs, dict) else getattr(outputs, "loss", None)
    return loss if isinstance(loss, torch.Tensor) else None


def batch_loss(outputs: Any, batch: Any, loss_fn: LossFn | None, who: str) -> torch.Tensor:
    """The loss of one batch's ``outputs``; ``who`` names the caller in errors."""
    if loss_fn is not None:
        return loss_fn(outputs, batch)
    if model_loss(outputs) is not None:
        return model_loss(outputs)
    targets = split_batch(batch)[1]
    if targets is None:
        raise ConfigError(f"{who} needs labelled batches (inputs, targets) or a "
                          f"loss_fn(outputs, batch)")
    if not isinstance(outputs, torch.Tensor):
        raise ConfigError(f"{who}: the model does not return a tensor of logits; "
                          f"pass loss_fn(outputs, batch)")
    check_labels(outputs, targets, who)
    return F.cross_entropy(outputs, targets)


def check_labels(logits: torch.Tensor, targets: Any, who: str) -> None:
    """Class labels that cross-entropy can read against these logits, or a ``ConfigError``
    naming the data (torch's own error does not say which argument is wrong)."""
    if not isinstance(targets, torch.Tensor) or targets.is_floating_point():
        return  # probabilities, or something the user's loss_fn would have handled
    if logits.dim() < 2 or targets.shape[0] != logits.shape[0]:
        raise ConfigError(f"{who}: data's targets have shape {tuple(targets.shape)}, the "
                          f"model's logits {tuple(logits.shape)}; give (inputs, class labels) "
                          f"batches or pass loss_fn(outputs, batch)")
    classes = logits.shape[1]
    if targets.numel() and (targets.min() < 0 or targets.max() >= classes):
        raise ConfigError(f"{who}: data's labels run from {targets.min().item()} to "
                          f"{targets.max().item()}, but the model has {classes} classes "
                          f"(labels 0 to {classes - 1})")
