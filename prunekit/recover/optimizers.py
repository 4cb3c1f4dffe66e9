"""An optimizer built before pruning, made to train the pruned model.

Pruning replaces every parameter it shrinks (and drops those of removed layers), so an
optimizer built earlier would go on updating tensors the model no longer holds. Given to
``pk.prune(optimizer=...)``, it is rebound: each parameter is swapped for its pruned
successor, and per-parameter state shaped like the parameter (momentum, Adam's moments) is
sliced to the channels that were kept.
"""

from __future__ import annotations

import torch
from torch import nn

from ..plan import Plan, original_name


def rebind_optimizer(optimizer: torch.optim.Optimizer, before: dict[str, nn.Parameter],
                     model: nn.Module, plan: Plan) -> None:
    """Point ``optimizer`` at ``model``'s parameters after ``plan``; ``before`` is the model's
    ``named_parameters()`` from before it was pruned."""
    now = {original_name(name, plan.layers, plan.stacks): p
           for name, p in model.named_parameters()}
    successor = {id(old): (now.get(name), plan.tensors.get(name, {}))
                 for name, old in before.items()}
    state = {}
    groups = []
    for group in optimizer.param_groups:
        kept = []
        for old in group["params"]:
            new, dims = successor.get(id(old), (old, {}))
            if new is None:  # its layer was removed
                continue
            kept.append(new)
            if old in optimizer.state:
                state[new] = {key: _sliced(value, old, dims)
                              for key, value in optimizer.state[old].items()}
        groups.append(kept)
    optimizer.state.clear()
    for group, params in zip(optimizer.param_groups, groups):
        group["params"] = params
    if isinstance(optimizer, torch.optim.LBFGS):
        # its state is a history of flat vectors over all parameters, meaningless in the
        # pruned model's smaller space: it starts over; and it keeps its own reference to
        # the parameter list
        optimizer._params = optimizer.param_groups[0]["params"]
        optimizer._numel_cache = None  # the count of all their elements, cached
        return
    optimizer.state.update(state)


def _sliced(value, old: torch.Tensor, dims: dict[int, list[int]]):
    """Optimizer state laid out like the parameter, sliced as it was. State broadcast along
    some dims (Adafactor's factored second moments: a row and a column of the parameter's
    shape, the other dim 1) is sliced along the dims it has; anything else (a step count)
    is kept as it is."""
    if not isinstance(value, torch.Tensor) or value.dim() != old.dim() or value.dim() == 0:
        return value
    if not all(size in (whole, 1) for size, whole in zip(value.shape, old.shape)):
        return value
    for dim, kept in sorted(dims.items()):
        if value.shape[dim] == old.shape[dim] != 1:
            value = value.index_select(dim, torch.as_tensor(kept, device=value.device))
    return value
