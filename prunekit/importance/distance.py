"""How far apart two activations are: what the label-free layer and head criteria measure."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F

from ..core.calls import call_model, iter_tensors
from ..core.distributed import sum_across


def first_tensor(value: Any) -> torch.Tensor:
    """The first tensor with dims in a module's output (a Hugging Face output's last hidden
    state, or its logits when the batch had labels: a loss, a scalar, comes first then)."""
    tensors = list(iter_tensors(value))
    return next((t for t in tensors if t.dim() > 0), tensors[0])


def token_weights(inputs: Any, output: torch.Tensor) -> torch.Tensor | None:
    """The batch's ``attention_mask`` (1 for real tokens, 0 for padding) when it lines up with
    the (batch, tokens) dims of a sequence output, else None: padding is no one's output."""
    if output.dim() < 3:
        return None
    return query_weights(inputs, output.shape[0], output.shape[1])


def query_weights(inputs: Any, batch: int, tokens: int) -> torch.Tensor | None:
    """The batch's ``attention_mask`` as (batch, tokens) float weights, if it has that shape."""
    mask = inputs.get("attention_mask") if isinstance(inputs, Mapping) else None
    if isinstance(mask, torch.Tensor) and tuple(mask.shape) == (batch, tokens):
        return mask.double()
    return None


def summed_distance(x: torch.Tensor, y: torch.Tensor, per_token: bool,
                    angular: bool = False,
                    weights: torch.Tensor | None = None) -> tuple[float, int]:
    """Sum over samples of 1 − cosine (or the angular distance) between ``x`` and ``y``, per
    sample or per token (averaged within the sample over the tokens ``weights`` marks, all
    tokens without it), and the number of samples."""
    x, y = x.double(), y.double()
    if per_token and x.dim() >= 3:
        cosine = F.cosine_similarity(x, y, dim=-1).flatten(1)
    else:
        cosine, weights = F.cosine_similarity(x.flatten(1), y.flatten(1), dim=1)[:, None], None
    distance = (torch.arccos(cosine.clamp(-1, 1)) / math.pi) if angular else 1 - cosine
    if weights is None:
        return distance.mean(1).sum().item(), x.shape[0]
    per_sample = (distance * weights).sum(1) / weights.sum(1).clamp(min=1)
    return per_sample.sum().item(), x.shape[0]


def mean_output_distance(model, inputs: list, reference: list[torch.Tensor],
                         per_token: bool) -> float:
    """Mean 1 − cosine between the model's output on each batch of ``inputs`` and the
    ``reference`` output for that batch (per real token when ``per_token``)."""
    total, samples = 0.0, 0
    for batch, expected in zip(inputs, reference):
        part, count = summed_distance(first_tensor(call_model(model, batch)), expected, per_token,
                                      weights=token_weights(batch, expected))
        total, samples = total + part, samples + count
    total, samples = sum_across(total, samples)  # over every process's batches
    return total / max(samples, 1)
