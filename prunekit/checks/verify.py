"""The correctness oracle: a masked copy and a physically pruned copy must agree.

Masking zeroes, in every member tensor, the channels the plan removes. Because a group holds
every tensor that reads or writes those channels, the zeroed channels contribute nothing, so
the masked model computes exactly what the smaller model computes.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any, Callable

import torch
from torch import nn

from ..measure import Measurement, size_and_outputs
from ..plan import Plan
from ..surgery.apply import evaluate_applied, tensor_owners

# float32 rounding differs between a masked and a pruned model (sums over fewer terms) and
# grows through deep networks: up to about 3e-5 of the output scale in a 6-layer BERT. A real
# mismatch is orders of magnitude larger.
DEFAULT_TOLERANCE = 1e-4


@dataclass
class VerifyReport:
    """How far apart the masked and pruned models are on the example inputs."""

    max_abs_diff: float
    output_scale: float
    tolerance: float
    shapes_match: bool
    # the unpruned (masked: same shapes) and pruned models' sizes, measured on the way
    unpruned: Measurement | None = None
    pruned: Measurement | None = None

    @property
    def relative_diff(self) -> float:
        return self.max_abs_diff / max(self.output_scale, 1e-12)

    @property
    def ok(self) -> bool:
        return self.shapes_match and self.relative_diff <= self.tolerance

    def __str__(self) -> str:
        verdict = "equivalent" if self.ok else "NOT equivalent"
        return (f"{verdict}: max |masked - pruned| = {self.max_abs_diff:.3g} "
                f"(relative {self.relative_diff:.3g}, tolerance {self.tolerance:g})")


def _removed(size: int, kept: list[int]) -> torch.Tensor:
    removed = torch.ones(size, dtype=torch.bool)
    removed[torch.as_tensor(kept, dtype=torch.long)] = False
    return removed.nonzero().flatten()


def _zero_removed(tensor: torch.Tensor, removed: dict[int, torch.Tensor]) -> Callable[[], None]:
    """Zero the removed channels of ``tensor`` in place and return what puts them back.

    Only the zeroed values are kept: the removed slices along one dim; along two dims, every
    removed column plus the removed rows' other columns (3/4 of a tensor that loses half
    along each, where a copy would be all of it: the difference decides whether the largest
    models fit in memory while they are checked).
    """
    if len(removed) == 1:
        (dim, index), = removed.items()
        saved = tensor.index_select(dim, index)
        tensor.index_fill_(dim, index, 0)
        return lambda: tensor.index_copy_(dim, index, saved)
    if len(removed) > 2:
        saved = tensor.clone()
        for dim, index in removed.items():
            tensor.index_fill_(dim, index, 0)
        return lambda: tensor.copy_(saved)
    (first, rows), (second, columns) = removed.items()
    view = tensor.movedim((first, second), (0, 1))  # writes go through to the tensor
    other_columns = _removed(view.shape[1], columns.tolist()).to(columns.device)
    row_index = rows[:, None]
    saved_columns = view.index_select(1, columns)
    saved_rows = view[row_index, other_columns[None, :]]
    view.index_fill_(1, columns, 0)
    view.index_fill_(0, rows, 0)

    def restore() -> None:
        view.index_copy_(1, columns, saved_columns)
        view[row_index, other_columns[None, :]] = saved_rows

    return restore


def _mask_parameters(model: nn.Module, plan: Plan) -> list[Callable[[], None]]:
    """Zero the removed channels of every parameter in place; return what puts each back."""
    owners = tensor_owners(model)
    undo = []
    with torch.no_grad():
        for name, dims in plan.tensors.items():
            module, attr, kind = owners[name]
            if kind != "parameter":
                continue
            tensor = getattr(module, attr)
            removed = {dim: _removed(tensor.shape[dim], kept).to(tensor.device)
                       for dim, kept in dims.items()}
            undo.append(_zero_removed(tensor, removed))
    return undo


def mask(model: nn.Module, plan: Plan) -> nn.Module:
    """Zero, in place, every parameter channel the plan removes (shapes unchanged)."""
    _mask_parameters(model, plan)
    return model


def _outputs(model: nn.Module, example_inputs: Any) -> tuple[Measurement, list[torch.Tensor]]:
    """The model's size, and its floating-point outputs in float64."""
    size, outputs = size_and_outputs(model, example_inputs)
    return size, [t.double() for t in outputs if t.is_floating_point()]


def _masked_outputs(model: nn.Module, example_inputs: Any, plan: Plan
                    ) -> tuple[Measurement | None, list[torch.Tensor]]:
    if plan.layers:  # a removed layer's "mask" is the identity it is replaced by
        rest = Plan(tensors=plan.tensors, shapes=plan.shapes)
        _, outputs = evaluate_applied(model, Plan(layers=plan.layers, stacks=plan.stacks),
                                      lambda swapped: _masked_outputs(swapped, example_inputs,
                                                                      rest))
        return None, outputs  # the swapped model is not the unpruned one: no size to report
    undo = _mask_parameters(model, plan)
    try:
        return _outputs(model, example_inputs)  # masking changes no shape: the unpruned size
    finally:
        with torch.no_grad():
            for restore in undo:
                restore()


def compare_in_place(model: nn.Module, example_inputs: Any, plan: Plan,
                     tolerance: float = DEFAULT_TOLERANCE) -> VerifyReport:
    """Masked vs pruned outputs of ``model``, computed in place and undone afterwards.

    Raises whatever the pruned model raises when it no longer runs (the model is restored).
    """
    unpruned, expected = _masked_outputs(model, example_inputs, plan)
    pruned, actual = evaluate_applied(model, plan, lambda m: _outputs(m, example_inputs))
    report = _compare(expected, actual, tolerance)
    report.unpruned, report.pruned = unpruned, pruned
    return report


def _compare(expected: list[torch.Tensor], actual: list[torch.Tensor],
             tolerance: float) -> VerifyReport:
    shapes_match = [t.shape for t in expected] == [t.shape for t in actual]
    diff = max(((a - e).abs().max().item() for a, e in zip(actual, expected)
                if a.shape == e.shape and a.numel()), default=0.0)
    scale = max((e.abs().max().item() for e in expected if e.numel()), default=1.0)
    return VerifyReport(diff, scale, tolerance, shapes_match)


def verify(original_model: nn.Module, example_inputs: Any, plan: Plan,
           tolerance: float = DEFAULT_TOLERANCE) -> VerifyReport:
    """Check that the plan's masked and pruned versions of a model give the same outputs.

    Args:
        original_model: the unpruned model; it is copied, never changed.
        example_inputs: inputs as for ``pk.prune``.
        plan: the plan to check.
        tolerance: largest allowed max-abs difference relative to the output scale.

    Returns:
        A ``VerifyReport``; ``report.ok`` is the verdict.

    Example:
        >>> report = pk.verify(original, x, result.plan); assert report.ok, report
    """
    return compare_in_place(copy.deepcopy(original_model), example_inputs, plan, tolerance)
