"""Concatenation, splitting and indexing: channels keep their identity at an offset."""

from __future__ import annotations

import torch

from ..axes import NotRepresentable, Spec
from .base import (
    arg,
    attributes_equal_to,
    dims_of,
    int_attributes,
    rule,
)


@rule("cat", "concat", "concatenate")
def cat(ctx, args, kwargs, out):
    tensors = [t for t in arg(args, kwargs, 0, "tensors") if t.numel() or t.dim() > 1]
    dim = arg(args, kwargs, 1, "dim", 0) % out.dim()
    specs = [ctx.specs(t) for t in tensors]
    for d in range(out.dim()):
        if d != dim:
            for other in specs[1:]:
                ctx.unify(specs[0][d], other[d])
    joined = [segment for s in specs for segment in ctx.axes.expand(s[dim])]
    ctx.set(out, [joined if d == dim else specs[0][d] for d in range(out.dim())])


@rule("stack")
def stack(ctx, args, kwargs, out):
    tensors = list(arg(args, kwargs, 0, "tensors"))
    dim = arg(args, kwargs, 1, "dim", 0) % out.dim()
    specs = [ctx.specs(t) for t in tensors]
    for d in range(tensors[0].dim()):
        for other in specs[1:]:
            ctx.unify(specs[0][d], other[d])
    new = ctx.axes.fresh_spec(len(tensors), f"stack in {ctx.module_path}")
    ctx.set(out, specs[0][:dim] + [new] + specs[0][dim:])


def _split_pieces(ctx, source, pieces) -> tuple[int | None, list[Spec]]:
    """Cut the source's dim where the pieces differ from it; (None, []) if they do not."""
    differing = [d for d in range(source.dim())
                 if any(p.shape[d] != source.shape[d] for p in pieces)]
    specs = ctx.specs(source)
    if not differing:
        for piece in pieces:
            ctx.set(piece, specs)
        return None, []
    if len(differing) > 1:
        raise NotRepresentable("split along several dims")
    dim = differing[0]
    offsets = list(_cumulative([p.shape[dim] for p in pieces]))[:-1]
    parts = ctx.axes.cut(specs[dim], offsets)
    for piece, part in zip(pieces, parts):
        ctx.set(piece, [part if d == dim else specs[d] for d in range(source.dim())])
    return dim, parts


@rule("chunk")
def chunk(ctx, args, kwargs, out):
    """Chunks are sized from the input, so they stay equal only if pruned alike: tie them.
    A count of the module's equal to a chunk's width may size the same cut on a path the
    trace does not take (Ultralytics' C2f chunks in ``forward`` and splits by ``self.c`` in
    the ``forward_split`` its ONNX export runs): it follows the chunks' width, if that is
    the only prunable dim it was seen with."""
    dim, parts = _split_pieces(ctx, args[0], list(out))
    if dim is None:
        return
    if len({ctx.axes.spec_size(p) for p in parts}) > 1:
        ctx.fix(args[0], f"chunks of unequal size in {ctx.module_path}", [dim])
        return
    for part in parts[1:]:
        ctx.unify(parts[0], part)
    module = ctx.current_module
    for name, value in int_attributes(module).items():
        if value == out[0].shape[dim] and value > 1:
            ctx.attribute_candidates_for(module, name, [parts[0]])


@rule("split", "split_with_sizes", "tensor_split", "hsplit", "vsplit")
def split(ctx, args, kwargs, out):
    """Split sizes are usually literals in the model's code, so the split dim keeps its size.
    Equal pieces sized by one of the module's own counts (GPT-2 splits its fused q/k/v by
    ``self.split_size``) are tied like chunks instead, and that count follows their width."""
    pieces = list(out)
    dim, parts = _split_pieces(ctx, args[0], pieces)
    if dim is None:
        return
    sizes = {piece.shape[dim] for piece in pieces}
    if len(sizes) > 1:
        _split_by_counts(ctx, args[0], dim, [piece.shape[dim] for piece in pieces], parts)
        return
    counts = attributes_equal_to(ctx.current_module, sizes.pop())
    if not counts:
        ctx.fix(args[0], f"split with fixed sizes in {ctx.module_path}", [dim])
        return
    for part in parts[1:]:
        ctx.unify(parts[0], part)
    for name in counts:
        ctx.attribute(ctx.current_module, name, parts[0])


def _split_by_counts(ctx, source, dim: int, sizes: list[int], parts: list) -> None:
    """Pieces of unequal sizes, each sized by a count of the module's own
    (``split(x, [self.c1, self.c2])``): each piece is pruned on its own and its count follows
    its width. Only where every size is one count's and no other's; literal sizes fix the
    dim."""
    counts = int_attributes(ctx.current_module)
    named = []
    for size in sizes:
        owners = [name for name, value in counts.items() if value == size]
        if len(owners) != 1 or sizes.count(size) != 1:
            ctx.fix(source, f"split with fixed sizes in {ctx.module_path}", [dim])
            return
        named.append(owners[0])
    for name, part in zip(named, parts):
        ctx.attribute(ctx.current_module, name, part)


def _cumulative(sizes):
    total = 0
    for size in sizes:
        total += size
        yield total


@rule("unbind")
def unbind(ctx, args, kwargs, out):
    source = args[0]
    dim = arg(args, kwargs, 1, "dim", 0) % source.dim()
    specs = ctx.specs(source)
    parts = ctx.axes.cut(specs[dim], list(range(1, source.shape[dim])))
    ctx.axes.fix_spec(specs[dim], f"unbind in {ctx.module_path}")
    for piece, part in zip(out, parts):
        ctx.set(piece, specs[:dim] + specs[dim + 1:])


@rule("narrow")
def narrow(ctx, args, kwargs, out):
    source = args[0]
    dim = arg(args, kwargs, 1, "dim") % source.dim()
    start = int(arg(args, kwargs, 2, "start"))
    _slice_dims(ctx, source, out, {dim: slice(start, start + out.shape[dim])})


@rule("select")
def select(ctx, args, kwargs, out):
    source = args[0]
    dim = arg(args, kwargs, 1, "dim") % source.dim()
    ctx.fix(source, f"select of one channel in {ctx.module_path}", [dim])
    specs = ctx.specs(source)
    ctx.set(out, specs[:dim] + specs[dim + 1:])


def _slice_dims(ctx, source, out, slices: dict[int, slice]) -> None:
    specs = list(ctx.specs(source))
    for dim, sl in slices.items():
        start, stop, step = sl.indices(source.shape[dim])
        if step != 1:
            ctx.fix(source, f"strided slice in {ctx.module_path}", [dim])
            specs[dim] = ctx.axes.fresh_spec(out.shape[dim], f"strided slice in {ctx.module_path}")
        elif stop - start != source.shape[dim]:
            specs[dim] = _slice_spec(ctx, specs[dim], start, stop, source.shape[dim])
    ctx.set(out, specs)


def _slice_spec(ctx, spec: Spec, start: int, stop: int, size: int) -> Spec:
    """The channels ``start:stop`` of a dim of ``size`` channels."""
    if stop <= start:  # no channels (the pass-through part of a rotary that rotates all)
        return []
    offsets = [offset for offset in (start, stop) if 0 < offset < size]
    return ctx.axes.cut(spec, offsets)[1 if start else 0]


@rule("__getitem__")
def getitem(ctx, args, kwargs, out):
    source, index = args[0], args[1]
    index = index if isinstance(index, tuple) else (index,)
    if any(isinstance(i, (torch.Tensor, list)) for i in index):
        return _advanced_index(ctx, source, index, out)
    n_real = sum(1 for i in index if i is not None and i is not Ellipsis)
    expanded = []
    for i in index:
        if i is Ellipsis:
            expanded.extend([slice(None)] * (source.dim() - n_real))
        else:
            expanded.append(i)
    expanded.extend([slice(None)] * (source.dim() - sum(1 for i in expanded if i is not None)))
    specs = ctx.specs(source)
    result, dim = [], 0
    for i in expanded:
        if i is None:
            result.append([[]])
            continue
        if isinstance(i, int):
            ctx.fix(source, f"indexing one channel in {ctx.module_path}", [dim])
        elif isinstance(i, slice):
            start, stop, step = i.indices(source.shape[dim])
            size = len(range(start, stop, step))
            if step != 1:
                ctx.fix(source, f"strided slice in {ctx.module_path}", [dim])
                result.append(ctx.axes.fresh_spec(size, f"strided slice in {ctx.module_path}"))
            elif size == source.shape[dim]:
                result.append(specs[dim])
            else:
                result.append(_slice_spec(ctx, specs[dim], start, stop, source.shape[dim]))
        else:
            raise NotRepresentable(f"index of type {type(i).__name__}")
        dim += 1
    ctx.set(out, result)


def _advanced_index(ctx, source, index, out):
    """``table[idx]``: the indexed dim is fixed, the remaining dims pass through."""
    if len(index) != 1 or not isinstance(index[0], torch.Tensor) or index[0].dtype == torch.bool:
        raise NotRepresentable("advanced indexing beyond a single integer index")
    ctx.fix(source, f"indexed by a tensor in {ctx.module_path}", [0])
    idx_specs = [ctx.axes.fresh_spec(n, f"index tensor in {ctx.module_path}") for n in index[0].shape]
    ctx.set(out, idx_specs + ctx.specs(source)[1:])


@rule("expand", "expand_as", "broadcast_to")
def expand(ctx, args, kwargs, out):
    """Dims the source has in full pass; a broadcast dim takes its size from ``expand_as``'s
    other tensor (and so its channels: a mask expanded to the scores keeps their heads), or
    from constant sizes (a new dim no one can prune)."""
    source = args[0]
    specs = ctx.specs(source)
    like = args[1] if len(args) > 1 and isinstance(args[1], torch.Tensor) else None

    def expanded(d: int) -> Spec:
        if like is not None and like.shape == out.shape:
            return ctx.specs(like)[d]
        return ctx.axes.fresh_spec(out.shape[d], "expanded dim")

    offset = out.dim() - source.dim()
    result = [expanded(d) for d in range(offset)]
    for d in range(source.dim()):
        same = source.shape[d] == out.shape[offset + d]
        result.append(specs[d] if same else expanded(offset + d))
    ctx.set(out, result)


@rule("repeat", "tile", "repeat_interleave")
def repeat(ctx, args, kwargs, out):
    source = args[0]
    if out.dim() != source.dim():
        raise NotRepresentable("repeat that adds dims")
    specs = ctx.specs(source)
    changed = [d for d in range(out.dim()) if out.shape[d] != source.shape[d]]
    ctx.fix(source, f"repeat in {ctx.module_path}", changed)
    ctx.set(out, [ctx.axes.fresh_spec(out.shape[d], "repeated dim") if d in changed else specs[d]
                  for d in range(out.dim())])


def _along_dims(dims_at: int, name: str):
    """Ops that reorder or accumulate along some dims: those dims are fixed, the others pass."""

    def along_dims_rule(ctx, args, kwargs, out):
        source = args[0]
        dims = arg(args, kwargs, dims_at, name)
        ctx.fix(source, f"reordering along a dim in {ctx.module_path}", dims_of(dims, source.dim()))
        ctx.set(out, ctx.specs(source))

    return along_dims_rule


rule("flip")(_along_dims(1, "dims"))
rule("roll")(_along_dims(2, "dims"))
rule("cumsum", "cumprod")(_along_dims(1, "dim"))
