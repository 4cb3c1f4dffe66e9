"""Bias compensation (FLAP, An et al. 2024): give back, through a layer's bias, the mean of
the inputs it lost.

A linear layer that loses input channels ``R`` loses ``W[:, R] x_R`` from its output. Its
mean over calibration tokens, ``W[:, R] · mean(x_R)``, is added to the bias, so only the
fluctuation around the mean is lost (what the ``fluctuation`` criterion scores). A layer
without a bias is given one (``Plan.biased`` records it, so ``pk.load`` rebuilds it), and so
are the layers its model family's config gives a bias together with it (a Llama config's
``mlp_bias`` covers the gate, up and down projections alike; they get zeros), so that the
config can still describe the model and ``from_pretrained`` reloads it.

The means are read from the unpruned model, in one forward pass per batch, before anything
is cut, as FLAP's own code reads them. Only ``nn.Linear`` layers are compensated (a
convolution's mean input differs at the borders).
"""

from __future__ import annotations

from typing import Callable, Iterable

import torch
from torch import nn

from ..core.batches import split_batch
from ..core.progress import Reporter, Step, silent
from ..importance.fluctuation import input_moments
from ..plan import Plan
from ..surgery.apply import give_zero_bias
from ..surgery.configs import bias_companions

Compensation = Callable[[nn.Module, Plan], list[str]]


def bias_compensation(model: nn.Module, data: Iterable, progress: Reporter = silent
                      ) -> Compensation:
    """Read every linear layer's mean input on ``data`` now (the unpruned model) and return
    ``compensate(pruned, plan)``, which adds what each layer's lost inputs gave on average to
    its bias and returns the names of the layers it changed."""
    batches = [split_batch(batch)[0] for batch in data]
    progress(Step("reading mean inputs for bias compensation", 0, 1))
    layers = {name: module for name, module in model.named_modules()
              if isinstance(module, nn.Linear)}
    means = {name: mean for name, (mean, _) in input_moments(
        model, layers, batches, "bias compensation").items()}
    # the unpruned weights: pruning gives layers new tensors and leaves these as they are
    weights = {name: layers[name].weight for name in means}
    progress(Step("reading mean inputs for bias compensation", 1, 1))

    def compensate(pruned: nn.Module, plan: Plan) -> list[str]:
        modules = dict(pruned.named_modules())
        shifts = {}
        for name, mean in means.items():
            dims = plan.tensors.get(f"{name}.weight", {})
            if 1 not in dims or not isinstance(modules.get(name), nn.Linear):
                continue
            weight = weights[name].detach().double()
            lost = torch.ones(weight.shape[1], dtype=torch.bool)
            lost[dims[1]] = False
            shift = weight[:, lost] @ mean[lost]
            shifts[name] = shift[dims[0]] if 0 in dims else shift
        give_biases(pruned, plan, [name for name in shifts if modules[name].bias is None])
        for name, shift in shifts.items():
            layer = modules[name]
            # a new tensor, never written into the old: an unpruned bias is the user's own
            layer.bias = nn.Parameter((layer.bias.detach().double() + shift).to(layer.bias),
                                      requires_grad=layer.bias.requires_grad)
        return sorted(shifts)

    return compensate


def give_biases(pruned: nn.Module, plan: Plan, layers: list[str]) -> None:
    """Give ``layers`` (linear layers without a bias) a zero bias, and the layers their
    model family's config gives one together with them, among those the plan changed (so
    that undoing the plan on an interrupt covers them); record them in ``plan.biased``."""
    modules = dict(pruned.named_modules())
    changed = {name.rpartition(".")[0] for name in plan.tensors}
    given = list(layers) + [
        name for name in bias_companions(pruned, list(layers))
        if name in changed and name not in layers and isinstance(modules.get(name), nn.Linear)
        and modules[name].bias is None]
    for name in given:
        give_zero_bias(modules[name])
    plan.biased = list(dict.fromkeys(plan.biased + given))
