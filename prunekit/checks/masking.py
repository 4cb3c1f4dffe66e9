"""Masking: the plan's removed channels zeroed in every member tensor, shapes unchanged, and
put back afterwards. The masked model is what the pruned one must compute.

Small tensors get zeroed copies as their data, large ones are zeroed in place (only the
zeroed values saved), and a large linear layer's weight is masked by hooks on the layer
without being written at all.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from ..plan import Plan
from ..surgery.apply import tensor_owners

COPY_LIMIT = 16 * 2**20  # bytes: a tensor this size or smaller is copied to be masked


def _kept_factor(tensor: torch.Tensor, removed: dict[int, torch.Tensor]) -> torch.Tensor:
    """1 where every dim's index is kept, 0 where any is removed, in ``tensor``'s dtype and
    shaped to broadcast over it (``removed``: dim -> True at each removed index)."""
    factor = torch.ones((), dtype=tensor.dtype, device=tensor.device)
    for dim, along in removed.items():
        shape = [1] * tensor.dim()
        shape[dim] = tensor.shape[dim]
        factor = factor * (~along).to(tensor.dtype).view(shape)
    return factor


def _zero_in_place(tensor: torch.Tensor, removed: dict[int, torch.Tensor]
                   ) -> Callable[[], None]:
    """Zero the removed channels of a large ``tensor`` in place (``removed``: dim -> True at
    each removed index) and return what puts them back.

    Only the zeroed values are kept: the removed slices along one dim; along two dims, the
    removed rows whole plus the kept rows' removed columns (3/4 of a tensor that loses half
    along each, where a copy would be all of it: the difference decides whether the largest
    models fit in memory while they are checked)."""
    indices = {dim: along.nonzero().flatten() for dim, along in removed.items()}
    if len(indices) == 1:
        (dim, index), = indices.items()
        saved = tensor.index_select(dim, index)
        tensor.index_fill_(dim, index, 0)
        return lambda: tensor.index_copy_(dim, index, saved)
    if len(indices) > 2:
        saved = tensor.clone()
        for dim, index in indices.items():
            tensor.index_fill_(dim, index, 0)
        return lambda: tensor.copy_(saved)
    # rows: the outer of the two dims, whose removed slices are copied whole and fast
    first, second = sorted(indices, key=tensor.stride, reverse=True)
    view = tensor.movedim((first, second), (0, 1))  # writes go through to the tensor
    rows, columns = indices[first], indices[second]
    kept_rows = (~removed[first]).nonzero().flatten()[:, None]
    saved_rows = view.index_select(0, rows)
    saved_columns = view[kept_rows, columns[None, :]]
    view.index_fill_(0, rows, 0)
    view.index_fill_(1, columns, 0)

    def restore() -> None:
        view[kept_rows, columns[None, :]] = saved_columns
        view.index_copy_(0, rows, saved_rows)

    return restore


def _zero_copies(tensors: list[torch.Tensor], factors: list[torch.Tensor]
                 ) -> list[Callable[[], None]]:
    """Give each small tensor a zeroed copy as its data (its product with its 0/1 factor)
    and return what gives each its own data back: no copy to save, none to restore.

    The products are taken in one batched call (``torch._foreach_mul``, as optimizers step
    their parameters), and their finiteness read in one more: per tensor, the few small ops
    of a product and its check cost more than the product itself on MobileNet-sized layers.
    A product is three to ten times faster than ``torch.where`` with a broadcast mask, which
    is used only where a product is not finite (an infinite or NaN weight, which times 0 is
    NaN, not 0; a finite sum that overflows just takes the slower way to the same copy)."""
    if not tensors:
        return []
    owns = [t.data for t in tensors]
    products = torch._foreach_mul(owns, factors)
    finite = torch.stack(torch._foreach_norm(products, 1)).isfinite().tolist()
    for tensor, own, factor, product, ok in zip(tensors, owns, factors, products, finite):
        tensor.data = product if ok else torch.where(factor != 0, own, 0)

    def giver(tensor: torch.Tensor, own: torch.Tensor) -> Callable[[], None]:
        def give_back() -> None:
            tensor.data = own

        return give_back

    return [giver(tensor, own) for tensor, own in zip(tensors, owns)]


def _zero_through_hooks(layer: nn.Linear, removed: dict[int, torch.Tensor]
                        ) -> Callable[[], None]:
    """Mask a large linear layer's weight without writing to it: its removed input features
    are zeroed on the way in (``removed[1]``), its removed outputs replaced on the way out
    (``removed[0]``). What the layer computes is what the zeroed weight gives (each removed
    column meets a zero input, each removed row's output is its bias), and nothing needs saving
    or restoring: on VGG16's 392 MB classifier layer, saving, zeroing and restoring in place
    took 0.3 s and copied 3/4 of it. Only for a weight held by this layer alone, all finite
    (an infinite weight times a zero input is NaN, where a zeroed weight gives 0)."""
    handles = []
    if 1 in removed:
        keep_in = ~removed[1]

        def zero_removed_inputs(_layer, args, kwargs):
            if args:
                return (args[0] * keep_in.to(args[0].dtype), *args[1:]), kwargs
            x = kwargs["input"]
            return args, {**kwargs, "input": x * keep_in.to(x.dtype)}

        handles.append(layer.register_forward_pre_hook(zero_removed_inputs, with_kwargs=True))
    if 0 in removed:
        keep_out = ~removed[0]

        def zero_removed_outputs(layer, _args, output):
            # a zeroed row gives its bias alone (zero too when the plan removes it as well)
            return torch.where(keep_out, output, 0 if layer.bias is None else layer.bias)

        # first of the layer's forward hooks: what a user's hook sees is the masked output
        handles.append(layer.register_forward_hook(zero_removed_outputs, prepend=True))

    def remove() -> None:
        for handle in handles:
            handle.remove()

    return remove


def _maskable_through_hooks(tensor: torch.Tensor, removed: dict[int, torch.Tensor],
                            module: nn.Module, attr: str,
                            owners: dict[str, tuple[nn.Module, str, str]]) -> bool:
    """Whether ``_zero_through_hooks`` masks ``tensor`` exactly: the weight of a plain linear
    layer, held by no other module or attribute (a tied weight is used elsewhere too),
    pruned along its own dims only, all finite."""
    if type(module) is not nn.Linear or attr != "weight" or not set(removed) <= {0, 1}:
        return False
    holders = {(id(m), a) for m, a, kind in owners.values()
               if kind == "parameter" and m._parameters.get(a) is tensor}
    return len(holders) == 1 and bool(tensor.sum().isfinite())


def _mask_parameters(model: nn.Module, plan: Plan, through_hooks: bool = True
                     ) -> list[Callable[[], None]]:
    """Zero the removed channels of every parameter; return what puts each back. A tensor
    up to ``COPY_LIMIT`` bytes gets a zeroed copy as its data (``_zero_copies``); a larger
    one is zeroed in place (``_zero_in_place``), or, the weight of a linear layer, masked by
    hooks on the layer (``_zero_through_hooks``) when ``through_hooks``."""
    owners = tensor_owners(model)
    # a group's members keep the same indices: its mask, and the factor each shape of
    # member is multiplied by, are built once
    masks: dict[tuple[tuple[int, ...], int, torch.device], torch.Tensor] = {}
    factors: dict[tuple, torch.Tensor] = {}

    def removed_along(kept: list[int], size: int, device: torch.device) -> torch.Tensor:
        key = (tuple(kept), size, device)  # hashing the tuple costs a tenth of as_tensor
        if key not in masks:
            along = torch.ones(size, dtype=torch.bool)
            along[torch.as_tensor(kept, dtype=torch.long)] = False
            masks[key] = along.to(device)
        return masks[key]

    def factor_for(tensor: torch.Tensor, removed: dict[int, torch.Tensor]) -> torch.Tensor:
        key = (tensor.dim(), tensor.dtype, tensor.device,
               tuple((dim, id(along)) for dim, along in removed.items()))
        if key not in factors:  # (the masks above live as long as this dict)
            factors[key] = _kept_factor(tensor, removed)
        return factors[key]

    # by tensor: a tensor under two names (tied) is masked once, on what both remove
    removed_from: dict[int, tuple[torch.Tensor, dict[int, torch.Tensor], nn.Module, str]] = {}
    for name, dims in plan.tensors.items():
        module, attr, kind = owners[name]
        if kind != "parameter":
            continue
        tensor = getattr(module, attr)
        _, removed, _, _ = removed_from.setdefault(id(tensor), (tensor, {}, module, attr))
        for dim, kept in dims.items():
            along = removed_along(kept, tensor.shape[dim], tensor.device)
            removed[dim] = along if dim not in removed else removed[dim] | along
    undo: list[Callable[[], None]] = []
    small: list[torch.Tensor] = []
    small_factors: list[torch.Tensor] = []
    with torch.no_grad():
        for tensor, removed, module, attr in removed_from.values():
            if tensor.numel() * tensor.element_size() <= COPY_LIMIT:
                small.append(tensor)
                small_factors.append(factor_for(tensor, removed))
            elif through_hooks and _maskable_through_hooks(tensor, removed, module, attr,
                                                           owners):
                undo.append(_zero_through_hooks(module, removed))
            else:
                undo.append(_zero_in_place(tensor, removed))
        undo += _zero_copies(small, small_factors)
    return undo


def mask(model: nn.Module, plan: Plan) -> nn.Module:
    """Zero, in place, every parameter channel the plan removes (shapes unchanged)."""
    _mask_parameters(model, plan, through_hooks=False)
    return model
