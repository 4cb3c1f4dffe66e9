"""Exact fusions for inference: a BatchNorm folded into the convolution or linear layer
that feeds it.

In eval mode a BatchNorm is an affine map per channel, ``y = (x - mean) / sqrt(var + eps) *
gamma + beta``, so a convolution (or linear layer) whose output only that norm reads can
absorb it: its weights scaled per output channel and its bias shifted, the norm replaced by
an identity. PyTorch runs the two separately in eager mode, and on small pruned
convolutions the norm's pass over memory costs about as much as the convolution itself.

Pairs are found by running the model once: a norm whose input is the very tensor a
convolution or linear layer returned, each called once. Whether the layer's output was read by
anything else is not visible that way, so every fusion is checked: the fused model must give
the unfused model's outputs on the example inputs (and fresh inputs of their shapes), or the
pairs are tried one at a time and those that change the outputs are left as they were.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Callable

import torch
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval, fuse_linear_bn_eval

from ..core.calls import call_model, evaluating, largest_difference_on, outputs_on, random_like
from ..errors import ConfigError

_CONVS = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
_TRANSPOSED = (nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)
_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)


@dataclass
class FusionReport:
    """Which (layer, norm) pairs were fused, which were left and why, and how far the fused
    model's outputs are from the unfused model's (relative to each output's scale)."""

    fused: list[tuple[str, str]] = field(default_factory=list)
    left: list[tuple[str, str, str]] = field(default_factory=list)
    largest_difference: float = 0.0
    checked_on: str = "the example inputs"

    def __str__(self) -> str:
        text = (f"fused {len(self.fused)} BatchNorm layer{'s' if len(self.fused) != 1 else ''} "
                f"into the layer before; outputs equal on {self.checked_on} (largest "
                f"difference {self.largest_difference:.2e} of an output's scale)")
        if self.left:
            layer, norm, why = self.left[0]
            more = f" and {len(self.left) - 1} more" if len(self.left) > 1 else ""
            text += f"; left {norm} after {layer} as it was ({why}){more}"
        return text


def fusable_pairs(model: nn.Module, example_inputs: Any) -> list[tuple[str, str]]:
    """(layer, norm) names where the norm reads exactly the tensor the layer returned, each
    module called once, in the order they ran."""
    names = {module: name for name, module in model.named_modules()}
    returned: dict[int, str] = {}  # id of a layer's output -> the layer
    calls: Counter[str] = Counter()
    pairs: list[tuple[str, str]] = []

    def after(module, args, output):
        name = names[module]
        calls[name] += 1
        if isinstance(module, (*_CONVS, *_TRANSPOSED, nn.Linear)) and isinstance(
                output, torch.Tensor):
            returned[id(output)] = name
        if isinstance(module, _NORMS) and args and isinstance(args[0], torch.Tensor):
            layer = returned.get(id(args[0]))
            if layer is not None:
                pairs.append((layer, name))

    hooks = [m.register_forward_hook(after) for m in names]
    try:
        with evaluating(model), torch.no_grad():
            output = call_model(model, example_inputs)
        del output
    finally:
        for hook in hooks:
            hook.remove()
    return [(layer, norm) for layer, norm in pairs
            if calls[layer] == 1 and calls[norm] == 1 and _foldable(model, layer, norm)]


def _foldable(model: nn.Module, layer_name: str, norm_name: str) -> bool:
    layer, norm = model.get_submodule(layer_name), model.get_submodule(norm_name)
    if not (norm.track_running_stats and norm.running_mean is not None):
        return False  # normalises by each batch's own statistics: not an affine map
    channels = (layer.out_channels if isinstance(layer, (*_CONVS, *_TRANSPOSED))
                else layer.out_features)
    return channels == norm.num_features and not (
        isinstance(layer, nn.Linear) and norm.num_features != layer.weight.shape[0])


def _fold(model: nn.Module, layer_name: str, norm_name: str) -> Callable[[], None]:
    """Replace the layer by its fused copy and the norm by an identity; return the undo."""
    layer, norm = model.get_submodule(layer_name), model.get_submodule(norm_name)
    if isinstance(layer, nn.Linear):
        fused = fuse_linear_bn_eval(layer, norm)
    else:
        fused = fuse_conv_bn_eval(layer, norm, transpose=isinstance(layer, _TRANSPOSED))
    _set(model, layer_name, fused)
    _set(model, norm_name, nn.Identity())

    def undo() -> None:
        _set(model, layer_name, layer)
        _set(model, norm_name, norm)

    return undo


def _set(model: nn.Module, name: str, module: nn.Module) -> None:
    parent, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, child, module)


def fuse(model: nn.Module, example_inputs: Any, *, tolerance: float = 1e-4,
         fresh_inputs: int = 2) -> FusionReport:
    """Fold every BatchNorm that reads a convolution's (or linear layer's) output alone into
    that layer, in place, for inference; checked equal to the unfused model.

    The check runs the model before and after on the example inputs and ``fresh_inputs``
    random inputs of their shapes; a pair whose fusion changes any output by more than
    ``tolerance`` of that output's scale is left as it was (``report.left``). Fusing is the
    last step before deployment: a fused model no longer matches its pruning plan, so save
    the pruned model (``pk.save``) first.

    Args:
        model: in eval mode (a BatchNorm folds its running statistics, which only inference
            uses).
        example_inputs: what the model is called with.
        tolerance: the largest change allowed, relative to each output's largest value.
        fresh_inputs: random inputs of the example's shapes checked besides it.

    Returns:
        A ``FusionReport``: the pairs fused and left, and the largest difference measured.

    Example:
        >>> report = pk.fuse(pruned.eval(), torch.randn(1, 3, 224, 224)); print(report)
    """
    if not isinstance(model, nn.Module):
        raise ConfigError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if any(m.training for m in model.modules() if isinstance(m, _NORMS)):
        raise ConfigError("model: fusing folds each BatchNorm's running statistics, which only "
                          "inference uses; call model.eval() first")
    inputs = [example_inputs] + [random_like(example_inputs, seed) for seed in range(fresh_inputs)]
    checked_on = (f"the example inputs and {fresh_inputs} fresh input"
                  f"{'s' if fresh_inputs != 1 else ''} of their shapes"
                  if fresh_inputs else "the example inputs")
    expected = outputs_on(model, inputs)
    pairs = fusable_pairs(model, example_inputs)
    report = FusionReport(checked_on=checked_on)
    undos = [_fold(model, layer, norm) for layer, norm in pairs]
    try:
        difference = largest_difference_on(outputs_on(model, inputs), expected)
    except BaseException:
        for undo in reversed(undos):
            undo()
        raise
    if difference <= tolerance:
        report.fused, report.largest_difference = list(pairs), difference
        return report
    for undo in reversed(undos):  # one at a time: keep those that change nothing
        undo()
    for layer, norm in pairs:
        undo = _fold(model, layer, norm)
        try:
            difference = largest_difference_on(outputs_on(model, inputs), expected)
        except BaseException:
            undo()
            raise
        if difference <= tolerance:
            report.fused.append((layer, norm))
            report.largest_difference = max(report.largest_difference, difference)
        else:
            undo()
            report.left.append((layer, norm, "its output is read elsewhere too"
                                if difference == float("inf") or difference > 1e-3
                                else f"outputs moved {difference:.1e} of their scale"))
    return report
