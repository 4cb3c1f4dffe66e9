"""Views and permutations: a reshape factors or merges dims, so a channel maps to a block of
features (flatten before a Linear) or a dim splits into (heads, head_dim)."""

from __future__ import annotations

import re
from typing import Callable

import torch

from ..axes import NotRepresentable, Spec
from .base import (
    RULES,
    arg,
    dims_of,
    int_attributes,
    rule,
)
from .elementwise import same_as_self


def reshape_specs(ctx, specs: list[Spec], in_shape, out_shape) -> list[Spec]:
    """Dim specs after a view from ``in_shape`` to ``out_shape`` (row-major)."""
    in_shape, out_shape = list(in_shape), list(out_shape)
    if 0 in in_shape or 0 in out_shape:
        raise NotRepresentable("empty tensor")
    axes = ctx.axes
    result: list[Spec] = [None] * len(out_shape)  # type: ignore[list-item]
    i = j = 0
    while i < len(in_shape) or j < len(out_shape):
        block_in, block_out, p_in, p_out = [], [], 1, 1
        while True:
            if i < len(in_shape) and (p_in < p_out or j >= len(out_shape)
                                      or (p_in == p_out and not block_in)):
                p_in *= in_shape[i]
                block_in.append(i)
                i += 1
            elif j < len(out_shape) and (p_out < p_in or i >= len(in_shape)
                                         or (p_in == p_out and not block_out)):
                p_out *= out_shape[j]
                block_out.append(j)
                j += 1
            else:
                break
            if p_in == p_out and block_in and block_out:
                break
        combined: Spec = [[]]
        for d in block_in:
            try:
                combined = axes.product(combined, axes.expand(specs[d]))
            except NotRepresentable:
                # ``heads × (rotated ⊕ passed)`` merged back (GPT-NeoX's partial rotary, its
                # q/k/v chunks tied, so v's head_dim is cut too) has no layout as segments;
                # with the cut factor fixed whole it has one, and the heads stay prunable
                reason = f"a dim cut in parts, merged in {ctx.module_path}"
                axes.fix_spec(specs[d], reason)
                whole = axes.fresh_spec(in_shape[d], reason)
                combined = axes.product(combined, axes.expand(whole))
        remaining, total = combined, p_in
        for k, d in enumerate(block_out):
            if k == len(block_out) - 1:
                result[d] = remaining
            elif out_shape[d] == 1:
                result[d] = [[]]
            else:
                total //= out_shape[d]
                result[d], remaining = _peel(ctx, remaining, total)
    return result


def _peel(ctx, spec: Spec, inner_size: int) -> tuple[Spec, Spec]:
    """Split a spec into an outer dim and an inner dim of ``inner_size`` channels."""
    axes = ctx.axes
    outers, inners = [], []
    for index in range(len(axes.expand(spec))):
        segment = axes.expand(spec)[index]
        if axes.segment_size(segment) % inner_size:
            raise NotRepresentable("a view that cuts across concatenated inputs")
        outer, inner = axes.split_segment(segment, inner_size)
        outers.append(outer)
        inners.append(inner)
    for inner in inners[1:]:  # each block repeats the same inner channels (channel shuffle)
        ctx.unify([inners[0]], [inner])
    return outers, [inners[0]]


@rule("view", "reshape", "flatten", "unflatten", "squeeze", "unsqueeze", "view_as", "reshape_as",
      "squeeze_", "unsqueeze_", "ravel", "atleast_2d")
def reshape(ctx, args, kwargs, out):
    source = args[0]
    specs = reshape_specs(ctx, ctx.specs(source), source.shape, out.shape)
    ctx.set(out, specs)
    _record_size_attributes(ctx, out, specs, _inferred_dims(args, out))


HEAD_COUNT = re.compile(r"^(num|n)_\w*heads?$")  # num_heads, n_head, num_attention_heads
# head sizes under the names architectures give them (T5: key_value_proj_dim; Funnel: d_head)
HEAD_SIZES = {"head_dim", "attention_head_size", "head_size", "dim_head", "dim_per_head",
              "key_value_proj_dim", "d_head", "attention_head_dim"}
# a view's last dim holding q, k and v (or k and v) of one head side by side
# (GPT-NeoX: ``view(..., -1, 3 * head_size)``): what it splits off is heads
FUSED_PER_HEAD = "view, fused per head"


def _inferred_dims(args, out) -> set[int]:
    """The dims a ``view(B, T, -1)`` leaves to be inferred (their size is no one's count)."""
    shape = args[1:]
    if len(shape) == 1 and isinstance(shape[0], (tuple, list, torch.Size)):
        shape = tuple(shape[0])
    if len(shape) != out.dim() or not all(isinstance(s, int) for s in shape):
        return set()
    return {d for d, size in enumerate(shape) if size == -1}


def _record_size_attributes(ctx, out, specs: list[Spec], inferred: set[int]) -> None:
    """A view's sizes often come from the module's own counts (``self.num_heads``,
    ``self.attn_dim``): an attribute whose value is the size of a dim counts that dim's
    channels and is updated when they are pruned. Every dim of that size, in every view,
    is a candidate: the graph later picks the one that can be pruned, if there is exactly
    one (a batch of 2 beside ``num_heads = 2`` must not be taken for the heads)."""
    module = ctx.current_module
    counts = int_attributes(module)
    paired = _head_pairs(counts, out.shape)
    for name, value in counts.items():
        if value < 2:
            continue
        trusted = HEAD_COUNT.match(name)  # a -1 dim's size is no one's count, unless named so
        dims = paired.get(name) or [d for d, size in enumerate(out.shape)
                                    if size == value and (trusted or d not in inferred)]
        if dims:
            ctx.attribute_candidates_for(module, name, [specs[d] for d in dims])
        if name in HEAD_SIZES and out.dim() > 1 and out.shape[-1] in (2 * value, 3 * value):
            ctx.attribute_candidates_for(module, name, [specs[-1]], seen_in=FUSED_PER_HEAD)


def _head_pairs(counts: dict[str, int], shape: torch.Size) -> dict[str, list[int]]:
    """Where a view has a head count and a head size side by side, (heads, head_dim) as every
    attention writes it, the count is the outer dim and the size the inner one, even when
    the two are equal (4 heads of 4 after pruning) and a size alone could not tell them
    apart."""
    paired: dict[str, list[int]] = {}
    for count_name, heads in counts.items():
        if not HEAD_COUNT.match(count_name) or heads < 2:
            continue
        for size_name, size in counts.items():
            if size_name not in HEAD_SIZES or size < 2:
                continue
            places = [d for d in range(len(shape) - 1)
                      if shape[d] == heads and shape[d + 1] == size]
            if len(places) == 1:
                paired[count_name], paired[size_name] = [places[0]], [places[0] + 1]
    return paired


def _permute_rule(order_of: Callable):
    def permute_rule(ctx, args, kwargs, out):
        specs = ctx.specs(args[0])
        ctx.set(out, [specs[d] for d in order_of(args, kwargs, args[0].dim())])

    return permute_rule


def _permute_order(args, kwargs, ndim):
    dims = args[1:] if len(args) > 1 else kwargs["dims"]
    if len(dims) == 1 and isinstance(dims[0], (list, tuple)):
        dims = dims[0]
    return [d % ndim for d in dims]


def _transpose_order(args, kwargs, ndim):
    order = list(range(ndim))
    if ndim < 2:
        return order
    d0 = arg(args, kwargs, 1, "dim0", 0) % ndim
    d1 = arg(args, kwargs, 2, "dim1", 1) % ndim
    order[d0], order[d1] = order[d1], order[d0]
    return order


def _movedim_order(args, kwargs, ndim):
    src = dims_of(arg(args, kwargs, 1, "source"), ndim)
    dst = dims_of(arg(args, kwargs, 2, "destination"), ndim)
    rest = [d for d in range(ndim) if d not in src]
    order = [None] * ndim
    for s, t in zip(src, dst):
        order[t] = s
    free = iter(rest)
    return [o if o is not None else next(free) for o in order]


rule("permute")(_permute_rule(_permute_order))
rule("transpose", "swapaxes", "swapdims", "transpose_", "t")(_permute_rule(_transpose_order))
rule("movedim", "moveaxis")(_permute_rule(_movedim_order))
RULES[torch.Tensor.T.__get__] = _permute_rule(lambda a, k, n: list(reversed(range(n))))
RULES[torch.Tensor.mT.__get__] = _permute_rule(lambda a, k, n: _transpose_order((None, -2, -1), {}, n))
RULES[torch.Tensor.data.__get__] = same_as_self
