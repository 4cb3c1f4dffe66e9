"""What a batch is, for everything that reads calibration or evaluation data.

A batch is the model's inputs (called as ``pk.prune`` calls example inputs) or an
``(inputs, targets)`` pair, or, when that could be misread, a ``pk.Batch(inputs, targets)``:
a model whose inputs are themselves a pair (``model(image, text)``) cannot tell its two
inputs from inputs and targets, so ``pk.prune`` refuses such batches (``check_batch_form``)
and ``pk.Batch`` says which is which. Losses come from the user's ``loss_fn(outputs, batch)``,
else the model's own (a Hugging Face model given ``labels``), else cross-entropy of the
outputs against the targets.
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple

import torch
from torch.nn import functional as F

from ..errors import ConfigError

LossFn = Callable[[Any, Any], torch.Tensor]


class Batch(NamedTuple):
    """One batch that cannot be misread: the model's inputs (a tensor, a tuple called as
    ``model(*inputs)``, a dict called as ``model(**inputs)``) and the targets, if any.

    Example:
        >>> data = [pk.Batch((images, texts), labels) for images, texts, labels in loader]
    """

    inputs: Any
    targets: Any = None


def split_batch(batch: Any) -> tuple[Any, Any]:
    """``pk.Batch``, ``(inputs, targets)`` or ``[inputs, targets]`` → both; anything else is
    inputs only."""
    if isinstance(batch, Batch):
        return batch.inputs, batch.targets
    if isinstance(batch, (tuple, list)) and len(batch) == 2:
        return batch[0], batch[1]
    return batch, None


def check_batch_form(batch: Any, example_inputs: Any, what: str = "data") -> None:
    """A ``ConfigError`` when a plain pair of a batch could be either of its readings: the
    model's example inputs are a pair too, and the batch is shaped like them rather than like
    ``(inputs, targets)``. A wrong guess would calibrate on the first input alone."""
    if isinstance(batch, Batch) or not _is_pair(batch) or not _is_pair(example_inputs):
        return
    if _form(batch[0]) == _form(example_inputs):
        return  # (inputs, targets): the first item is shaped like the example inputs
    if _form(batch) == _form(example_inputs):
        raise ConfigError(f"{what}: a batch of two items is read as (inputs, targets), but "
                          f"the model's example inputs are a pair as well, so this batch may "
                          f"be its two inputs; give each batch as pk.Batch(inputs) or "
                          f"pk.Batch(inputs, targets)")


def _is_pair(value: Any) -> bool:
    return isinstance(value, (tuple, list)) and not isinstance(value, Batch) and len(value) == 2


def _form(value: Any) -> Any:
    """The nesting of a value, without sizes: what tells inputs from (inputs, targets)."""
    if isinstance(value, torch.Tensor):
        return "tensor"
    if isinstance(value, (tuple, list)):
        return tuple(_form(item) for item in value)
    if isinstance(value, dict):
        return tuple(sorted(value))
    return type(value).__name__


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
