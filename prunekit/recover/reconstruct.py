"""Reconstruction after channel pruning (He et al. 2017; Luo et al., ThiNet).

When a layer loses input channels its output drifts. Instead of fine-tuning, re-fit the
layer's remaining weights and its bias by least squares so that, on calibration data, its output in the
pruned network matches its output in the original network as closely as possible. Layers
are re-fitted in execution order, each seeing the inputs the already re-fitted layers above
it produce.
"""

from __future__ import annotations

from typing import Any, Iterable

import torch
from torch import nn
from torch.nn import functional as F

from ..batches import split_batch
from ..calls import call_model, evaluating
from ..distributed import sum_across
from ..plan import Plan

MAX_ROWS = 20_000  # least-squares rows kept per layer (random positions), plenty for a fit
RIDGE = 1e-4  # relative Tikhonov term: keeps the fit stable when inputs are collinear


def reconstruct(original: nn.Module, pruned: nn.Module, plan: Plan, data: Iterable,
                seed: int = 0) -> list[str]:
    """Re-fit every Conv2d (ungrouped) and Linear whose input channels the plan pruned.

    Returns the names of the re-fitted layers.
    """
    batches = [split_batch(b)[0] for b in data]
    generator = torch.Generator().manual_seed(seed)
    fitted = []
    # one layer at a time: memory holds one layer's activations, at one forward pass of
    # each model per layer
    for name in _consumers(pruned, plan, batches[0]):
        layer = pruned.get_submodule(name)
        inputs = _captured(pruned, name, batches, capture_input=True)
        targets = _captured(original, name, batches, capture_input=False)
        kept_out = plan.tensors.get(f"{name}.weight", {}).get(0)
        if kept_out is not None:  # a Linear's channels are its output's last dim
            channels = 1 if isinstance(layer, nn.Conv2d) else -1
            targets = [t.index_select(channels, torch.as_tensor(kept_out)) for t in targets]
        _refit(layer, inputs, targets, generator)
        fitted.append(name)
    return fitted


def _consumers(model: nn.Module, plan: Plan, batch: Any) -> list[str]:
    """Layers whose input channels were pruned, in execution order."""
    candidates = {name for name, module in model.named_modules()
                  if (isinstance(module, nn.Linear)
                      or (isinstance(module, nn.Conv2d) and module.groups == 1))
                  and 1 in plan.tensors.get(f"{name}.weight", {})}
    order: list[str] = []

    def hook_for(name: str):
        def pre_hook(_module, _args):
            if name not in order:
                order.append(name)
        return pre_hook

    handles = [module.register_forward_pre_hook(hook_for(name))
               for name, module in model.named_modules() if name in candidates]
    try:
        with torch.no_grad():
            call_model(model, batch)
    finally:
        for handle in handles:
            handle.remove()
    return order


def _captured(model: nn.Module, name: str, batches: list, capture_input: bool) -> list[torch.Tensor]:
    layer = model.get_submodule(name)
    captured: list[torch.Tensor] = []

    def hook(_module, args, output):
        captured.append((args[0] if capture_input else output).detach())

    handle = layer.register_forward_hook(hook)
    try:
        with evaluating(model), torch.no_grad():
            for batch in batches:
                call_model(model, batch)
    finally:
        handle.remove()
    return captured


def _refit(layer: nn.Module, inputs: list[torch.Tensor], targets: list[torch.Tensor],
           generator: torch.Generator) -> None:
    if isinstance(layer, nn.Conv2d):
        rows = torch.cat([F.unfold(x, layer.kernel_size, layer.dilation, layer.padding,
                                   layer.stride).transpose(1, 2).flatten(0, 1) for x in inputs])
        wanted = torch.cat([y.flatten(2).transpose(1, 2).flatten(0, 1) for y in targets])
    else:
        rows = torch.cat([x.reshape(-1, x.shape[-1]) for x in inputs])
        wanted = torch.cat([y.reshape(-1, y.shape[-1]) for y in targets])
    if rows.shape[0] > MAX_ROWS:
        pick = torch.randperm(rows.shape[0], generator=generator)[:MAX_ROWS]
        rows, wanted = rows[pick], wanted[pick]
    rows, wanted = rows.double(), wanted.double()
    fit_bias = layer.bias is not None  # the bias absorbs the mean the lost inputs carried
    if fit_bias:
        rows = torch.cat([rows, torch.ones(len(rows), 1, dtype=rows.dtype)], dim=1)
    # summed over every process's rows (torchrun), so all of them fit the same weights
    gram, cross = sum_across(rows.T @ rows, rows.T @ wanted)
    ridge = RIDGE * gram.diagonal().mean().clamp_min(1e-12) * torch.eye(gram.shape[0], dtype=gram.dtype)
    if fit_bias:
        ridge[-1, -1] = 0  # no pull of the bias towards zero
    solution = torch.linalg.solve(gram + ridge, cross)  # (inputs [+ 1], outputs)
    with torch.no_grad():
        weights = solution[:-1] if fit_bias else solution
        layer.weight.copy_(weights.T.reshape(layer.weight.shape).to(layer.weight.dtype))
        if fit_bias:
            layer.bias.copy_(solution[-1].to(layer.bias.dtype))
