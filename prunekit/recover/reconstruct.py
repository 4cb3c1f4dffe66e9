"""Reconstruction after channel pruning (He et al. 2017; Luo et al., ThiNet).

When a layer loses input channels its output drifts. Instead of fine-tuning, re-fit the
layer's remaining weights and its bias by least squares so that, on calibration data, its output in the
pruned network matches its output in the original network as closely as possible. Layers
are re-fitted in execution order, each seeing the inputs the already re-fitted layers above
it produce.

A one-layer ``nn.LSTM``, ``nn.GRU`` or ``nn.RNN`` whose inputs or hidden units were pruned has
its input weights re-fitted, one direction at a time: the input's share of its kept gates,
``W_ih x + b_ih``, is matched to the original's. The recurrent weights stay as pruned: fitting
them too, on hidden states read off the pruned layer's output, matched each step better but
read fewer words on the OCR benchmark (errors compound over the sequence). Stacked recurrent
layers (``num_layers > 1``) and projected LSTMs are left as pruned: their inner layers' inputs
are not visible from outside.
"""

from __future__ import annotations

from collections import Counter
from typing import Any, Iterable

import torch
from torch import nn

from ..core.batches import split_batch
from ..core.calls import call_model, evaluating
from ..core.distributed import sum_across
from ..core.progress import Reporter, Step, silent
from ..importance.refit_rows import (
    MAX_ROWS,
    RECURRENT,
    RIDGE,
    conv_patches,
    refits,
    refittable_recurrent,
)
from ..plan import Plan
from .compensate import give_biases


def reconstruct(original: nn.Module, pruned: nn.Module, plan: Plan, data: Iterable,
                seed: int = 0, progress: Reporter = silent, add_biases: bool = False
                ) -> list[str]:
    """Re-fit every Conv2d (ungrouped) and Linear whose input channels the plan pruned, and
    every one-layer recurrent layer whose inputs or hidden units it pruned. With
    ``add_biases``, a linear layer without a bias is given one to fit (``give_biases``):
    a bias absorbs the mean that the lost inputs carried.

    Returns the names of the re-fitted layers.
    """
    batches = [split_batch(b)[0] for b in data]
    generator = torch.Generator().manual_seed(seed)
    fitted = []
    order, calls = _consumers(pruned, plan, batches[0])
    if add_biases:
        give_biases(pruned, plan, [name for name in order
                                   if isinstance(pruned.get_submodule(name), nn.Linear)
                                   and pruned.get_submodule(name).bias is None])
    # one layer at a time: memory holds one layer's activations, at one forward pass of
    # each model per layer, which stops at that layer when it is called once
    for index, name in enumerate(order):
        progress(Step("re-fitting layers", index, len(order), name))
        layer = pruned.get_submodule(name)
        stop = calls[name] == 1
        if isinstance(layer, RECURRENT):
            _refit_recurrent(layer, original.get_submodule(name), plan, name,
                             _captured(pruned, name, batches, True, stop),
                             _captured(original, name, batches, True, stop), generator)
            fitted.append(name)
            continue
        inputs = _captured(pruned, name, batches, capture_input=True, stop=stop)
        targets = _captured(original, name, batches, capture_input=False, stop=stop)
        kept_out = plan.tensors.get(f"{name}.weight", {}).get(0)
        if kept_out is not None:  # a Linear's channels are its output's last dim
            channels = 1 if isinstance(layer, nn.Conv2d) else -1
            targets = [t.index_select(channels, torch.as_tensor(kept_out)) for t in targets]
        _refit(layer, inputs, targets, generator)
        fitted.append(name)
    if order:
        progress(Step("re-fitting layers", len(order), len(order)))
    return fitted


def _consumers(model: nn.Module, plan: Plan, batch: Any) -> tuple[list[str], Counter[str]]:
    """Layers to re-fit, in execution order: those whose input channels were pruned, and
    one-layer recurrent layers that lost inputs or hidden units; and how many times ``batch``
    calls each."""
    candidates = {name for name, module in model.named_modules()
                  if (refits(module, "weight") and 1 in plan.tensors.get(f"{name}.weight", {}))
                  or (refittable_recurrent(module)
                      and any(1 in plan.tensors.get(f"{name}.weight_{kind}_l0", {})
                              for kind in ("ih", "hh")))}
    order: list[str] = []
    calls: Counter[str] = Counter()

    def hook_for(name: str):
        def pre_hook(_module, _args):
            if name not in order:
                order.append(name)
            calls[name] += 1
        return pre_hook

    handles = [module.register_forward_pre_hook(hook_for(name))
               for name, module in model.named_modules() if name in candidates]
    try:
        with torch.no_grad():
            call_model(model, batch)
    finally:
        for handle in handles:
            handle.remove()
    return order, calls


class _Captured(BaseException):
    """Ends a forward pass once the layer it was run for has been read. A BaseException, so
    that a model's own ``except Exception`` does not swallow it."""


def _captured(model: nn.Module, name: str, batches: list, capture_input: bool,
              stop: bool = False) -> list[torch.Tensor]:
    """The layer's first input (or its output) on every batch; with ``stop``, each forward
    pass ends there, the rest of the model unrun."""
    layer = model.get_submodule(name)
    captured: list[torch.Tensor] = []

    def hook(_module, args, output):
        tensor = (args[0] if capture_input else output).detach()
        if stop:  # the pass ends here: nothing after the layer (an in-place ReLU) changes it
            captured.append(tensor)
            raise _Captured
        captured.append(tensor.clone())  # the rest of the pass may write to it in place

    handle = layer.register_forward_hook(hook)
    try:
        with evaluating(model), torch.no_grad():
            for batch in batches:
                try:
                    call_model(model, batch)
                except _Captured:
                    pass
    finally:
        handle.remove()
    return captured


def _refit(layer: nn.Module, inputs: list[torch.Tensor], targets: list[torch.Tensor],
           generator: torch.Generator) -> None:
    if isinstance(layer, nn.Conv2d):
        rows, wanted = _conv_rows(layer, inputs, targets, generator)
    else:
        rows = torch.cat([x.reshape(-1, x.shape[-1]) for x in inputs])
        wanted = torch.cat([y.reshape(-1, y.shape[-1]) for y in targets])
    fit_bias = layer.bias is not None  # the bias absorbs the mean the lost inputs carried
    weights, bias = _least_squares(rows, wanted, fit_bias, generator)
    _replace(layer, "weight", weights)
    if fit_bias:
        _replace(layer, "bias", bias)


def _replace(layer: nn.Module, name: str, value: torch.Tensor) -> None:
    """Give ``layer`` a new parameter ``name`` holding ``value`` (in the old one's shape,
    dtype and grad flag), never writing into the old one: an unpruned bias is the user's own
    tensor, and the transaction that undoes a prune puts tensors back, not their contents."""
    old = getattr(layer, name)
    setattr(layer, name, nn.Parameter(value.detach().reshape(old.shape).to(old),
                                      requires_grad=old.requires_grad))


def _conv_rows(layer: nn.Conv2d, inputs: list[torch.Tensor], targets: list[torch.Tensor],
               generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """The least-squares rows of a convolution: its input patch (channels by kernel position,
    as the weight is laid out) and its output at every output position of every batch, or at
    ``MAX_ROWS`` of them drawn at random. Only the drawn patches are gathered: unfolding every
    position first would hold the kernel's area times the inputs (gigabytes for a 3×3
    convolution on a few 320×320 pages), to keep a few thousand rows of it."""
    counts = [y.shape[0] * y.shape[2] * y.shape[3] for y in targets]
    total = sum(counts)
    # drawn as the rows of the whole unfolding would be: the same rows, in the same order
    picked = (torch.randperm(total, generator=generator)[:MAX_ROWS] if total > MAX_ROWS
              else torch.arange(total))
    kh, kw = layer.kernel_size
    rows = inputs[0].new_empty(len(picked), inputs[0].shape[1] * kh * kw)
    wanted = targets[0].new_empty(len(picked), targets[0].shape[1])
    start = 0
    for x, y, count in zip(inputs, targets, counts):
        here = ((picked >= start) & (picked < start + count)).nonzero().flatten()
        local = picked[here] - start
        start += count
        if not len(here):
            continue
        width = y.shape[3]
        n, i, j = local // (y.shape[2] * width), local // width % y.shape[2], local % width
        rows[here] = conv_patches(layer, x, n, i, j)
        wanted[here] = y[n, :, i, j]
    return rows, wanted


def _least_squares(rows: torch.Tensor, wanted: torch.Tensor, fit_bias: bool,
                   generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Weights ``(outputs, inputs)`` and bias (or None) with ``rows @ W.T + b ≈ wanted``."""
    if rows.shape[0] > MAX_ROWS:
        pick = torch.randperm(rows.shape[0], generator=generator)[:MAX_ROWS]
        rows, wanted = rows[pick], wanted[pick]
    rows, wanted = rows.double(), wanted.double()
    if fit_bias:
        rows = torch.cat([rows, torch.ones(len(rows), 1, dtype=rows.dtype)], dim=1)
    # summed over every process's rows (torchrun), so all of them fit the same weights
    gram, cross = sum_across(rows.T @ rows, rows.T @ wanted)
    ridge = RIDGE * gram.diagonal().mean().clamp_min(1e-12) * torch.eye(gram.shape[0], dtype=gram.dtype)
    if fit_bias:
        ridge[-1, -1] = 0  # no pull of the bias towards zero
    solution = torch.linalg.solve(gram + ridge, cross)  # (inputs [+ 1], outputs)
    if fit_bias:
        return solution[:-1].T, solution[-1]
    return solution.T, None


def _refit_recurrent(layer: nn.RNNBase, original: nn.RNNBase, plan: Plan, name: str,
                     inputs: list[torch.Tensor], original_inputs: list[torch.Tensor],
                     generator: torch.Generator) -> None:
    """Match each direction's input share of its kept gates to the original's (the layer's
    input sequences, in the pruned and in the original model)."""
    for suffix in ("_l0", "_l0_reverse")[:2 if layer.bidirectional else 1]:
        w_ih = getattr(original, "weight_ih" + suffix)
        kept = plan.tensors.get(f"{name}.weight_ih{suffix}", {}).get(0)
        kept = torch.arange(w_ih.shape[0]) if kept is None else torch.as_tensor(kept)
        bias = getattr(original, "bias_ih" + suffix)[kept] if layer.bias else 0
        # every step of every sequence is a row, whatever the layout (batch_first or not)
        rows = torch.cat([x.reshape(-1, x.shape[-1]) for x in inputs])
        wanted = torch.cat([(x0 @ w_ih[kept].T + bias).reshape(-1, len(kept))
                            for x0 in original_inputs])
        weights, fitted_bias = _least_squares(rows, wanted, layer.bias, generator)
        _replace(layer, "weight_ih" + suffix, weights)
        if fitted_bias is not None:
            _replace(layer, "bias_ih" + suffix, fitted_bias)
