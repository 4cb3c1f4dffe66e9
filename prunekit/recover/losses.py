"""The terms a distillation loss is made of: what to compare, and how far apart it is.

Every term is a mean over the rows of a batch (a sample, or a token when the tensor has a
sequence dim and the batch an ``attention_mask``; padding counts for nothing). On several
processes each one sees part of the global batch, so the divisor of that mean, and the
teacher's variance that scales the squared error, are summed across processes first
(``sum_across``): each process's term is its rows' share of the global mean, times the
number of processes because DistributedDataParallel averages gradients. Two processes then
follow one process on the same global batch, loss and gradient, not just roughly.
"""

from __future__ import annotations

from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import nn

from ..core.arguments import check_number
from ..core.calls import iter_tensors
from ..core.distributed import sum_across, world_size
from ..errors import ConfigError
from ..importance.distance import query_weights

OUTPUT_LOSSES = ("kl", "cosine", "mse")
HIDDEN_LOSSES = ("mse", "cosine")

OutputFn = Callable[[Any, Any], torch.Tensor]


def pick_output(outputs: Any, inputs: Any, output: str | OutputFn) -> tuple[torch.Tensor, str]:
    """The tensor of a model's outputs that distillation compares, and what it is:
    ``"logits"`` (a Hugging Face output's logits, or a bare 2-D tensor a classifier returns)
    or ``"features"`` (a last hidden state, an embedding, anything else)."""
    if callable(output):
        picked = output(outputs, inputs)
        if not isinstance(picked, torch.Tensor):
            raise ConfigError(f"output= returned a {type(picked).__name__}, not a tensor")
        return picked, "features"
    if isinstance(outputs, torch.Tensor):
        return outputs, "logits" if outputs.dim() == 2 else "features"
    for name in ("logits", "last_hidden_state"):
        found = outputs.get(name) if isinstance(outputs, dict) else getattr(outputs, name, None)
        if isinstance(found, torch.Tensor):
            return found, "logits" if name == "logits" else "features"
    tensors = list(iter_tensors(outputs))
    if not tensors:
        raise ConfigError(f"the model returned a {type(outputs).__name__} holding no tensor "
                          f"to distil; pass output=lambda outputs, inputs: <tensor>")
    return tensors[0], "features"


def feature_dim(x: torch.Tensor) -> int:
    """Where the channels are: dim 1 of an image-like (N, C, H, W) map, else the last dim."""
    return 1 if x.dim() == 4 else -1


def _rows(x: torch.Tensor) -> torch.Tensor:
    """(rows, features): every position of every sample is a row."""
    return x.movedim(feature_dim(x), -1).reshape(-1, x.shape[feature_dim(x)])


def row_weights(inputs: Any, x: torch.Tensor) -> torch.Tensor:
    """1 per row of ``_rows(x)``, 0 for the padded tokens the batch's attention mask marks."""
    if x.dim() == 3:
        mask = query_weights(inputs, x.shape[0], x.shape[1])
        if mask is not None:
            return mask.reshape(-1).to(x.dtype)
    rows = x.numel() // x.shape[feature_dim(x)]
    return torch.ones(rows, dtype=x.dtype, device=x.device)


def _global_mean(per_row: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """This process's share of the mean over every process's rows (see the module docstring)."""
    (total_weight,) = sum_across(weights.detach().sum().double())
    return (per_row * weights).sum() * world_size() / total_weight.clamp_min(1).to(per_row.dtype)


def kl_loss(student: torch.Tensor, teacher: torch.Tensor, weights: torch.Tensor,
            temperature: float) -> torch.Tensor:
    """KL(teacher ‖ student) of the distributions softened at ``temperature``, per row, times
    temperature² so the gradient keeps its size whatever the temperature (Hinton et al.)."""
    s = F.log_softmax(_rows(student).float() / temperature, dim=-1)
    t = F.log_softmax(_rows(teacher).float() / temperature, dim=-1)
    per_row = F.kl_div(s, t, reduction="none", log_target=True).sum(-1)
    return _global_mean(per_row, weights.float()) * temperature ** 2


def cosine_loss(student: torch.Tensor, teacher: torch.Tensor,
                weights: torch.Tensor) -> torch.Tensor:
    """1 − cosine between each row's features."""
    per_row = 1 - F.cosine_similarity(_rows(student), _rows(teacher), dim=-1)
    return _global_mean(per_row, weights)


def mse_loss(student: torch.Tensor, teacher: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Mean squared distance per feature, relative to the teacher's variance (over every
    element of the global batch), so a block whose activations are large does not outweigh
    the others."""
    s, t = _rows(student), _rows(teacher)
    t_detached = t.detach().double()
    count, total, squares = sum_across(torch.tensor(float(t.numel()), dtype=torch.float64),
                                       t_detached.sum(), t_detached.square().sum())
    variance = (squares - total ** 2 / count) / max(count.item() - 1, 1)
    per_row = (s - t).square().sum(-1) / (s.shape[-1] * variance.clamp_min(1e-12).to(s.dtype))
    return _global_mean(per_row, weights)


def distance(kind: str, student: torch.Tensor, teacher: torch.Tensor, weights: torch.Tensor,
             temperature: float) -> torch.Tensor:
    if student.shape != teacher.shape:
        raise ConfigError(f"student and teacher tensors differ in shape: "
                          f"{tuple(student.shape)} and {tuple(teacher.shape)}")
    if kind == "kl":
        return kl_loss(student, teacher, weights, temperature)
    if kind == "cosine":
        return cosine_loss(student, teacher, weights)
    return mse_loss(student, teacher, weights)


class Projection(nn.Module):
    """A learned linear map from the student's feature width to the teacher's, applied along
    the feature dim, for blocks whose hidden size pruning narrowed. Trained with the
    student, and not part of it."""

    def __init__(self, student_width: int, teacher_width: int):
        super().__init__()
        self.linear = nn.Linear(student_width, teacher_width, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dim = feature_dim(x)
        return self.linear(x.movedim(dim, -1)).movedim(-1, dim)

    @torch.no_grad()
    def fit(self, student: torch.Tensor, teacher: torch.Tensor) -> None:
        """Start from the least-squares map between the two on a first batch: after hidden
        size pruning that is nearly the selection of the kept channels, so distillation
        starts from the pruned model's own quality rather than from noise. On several
        processes the normal equations are summed over all of their rows, so every process
        fits the same map."""
        s, t = _rows(student).double(), _rows(teacher).double()  # (rows, width)
        gram, cross, squares, rows = sum_across(s.T @ s, s.T @ t, s.square().sum(),
                                                torch.tensor(float(len(s)), dtype=s.dtype))
        # a small ridge, relative to the inputs' mean square: collinear inputs still solve
        scale = (squares / (rows * s.shape[1])).clamp_min(1e-12)
        ridge = 1e-4 * scale * rows * torch.eye(s.shape[1], dtype=s.dtype, device=s.device)
        solution = torch.linalg.solve(gram + ridge, cross)  # (student width, teacher width)
        self.linear.weight.copy_(solution.T.to(self.linear.weight.dtype))


def check_temperature(value: float) -> None:
    check_number(value, "temperature", above=True, wanted="a positive number")
