"""Coupling rules: for each torch op, how its output dims relate to its input dims.

A rule is ``rule(ctx, args, kwargs, out)``; it reads the inputs' dim specs with
``ctx.specs(t)``, ties dims with ``ctx.unify``, marks dims that must not change with
``ctx.fix`` and records the output's specs with ``ctx.set``. Rules are registered by name and
resolved once to the real function objects in ``torch``, ``torch.Tensor`` and
``torch.nn.functional``; an op that resolves to no rule is handled as unknown by the tracer.

Ops that mix channels non-linearly (normalising over a dim, softmax, mean/max over a dim) fix
that dim: removing a channel there would change the other channels' values, so masked and
pruned models would disagree.
"""

from __future__ import annotations

import re
from typing import Any, Callable

import torch
import torch.nn.functional as F

from .axes import NotRepresentable, Spec

RULES: dict[Callable, Callable] = {}
_NAMESPACES = (torch, torch.Tensor, F, torch._C._nn, torch.special)


def rule(*names: str):
    """Register a rule for every function or method called ``name`` in torch's namespaces."""

    def register(fn: Callable) -> Callable:
        for name in names:
            for namespace in _NAMESPACES:
                func = getattr(namespace, name, None)
                if callable(func):
                    RULES[func] = fn
        return fn

    return register


def _arg(args: tuple, kwargs: dict, index: int, name: str, default: Any = None) -> Any:
    if name in kwargs:
        return kwargs[name]
    return args[index] if len(args) > index else default


def _tensors(obj: Any) -> list[torch.Tensor]:
    if isinstance(obj, torch.Tensor):
        return [obj]
    if isinstance(obj, (list, tuple)):
        return [t for item in obj for t in _tensors(item)]
    return []


def _dims(value: Any, ndim: int) -> list[int]:
    if value is None:
        return list(range(ndim))
    if isinstance(value, int):
        value = [value]
    return [d % ndim for d in value]


# -- pointwise ---------------------------------------------------------------------------------
def broadcast(ctx, tensors: list[torch.Tensor], out: torch.Tensor) -> None:
    """Tie the dims that line up (right-aligned) in a broadcasting op; size-1 dims stay free."""
    specs: list[Spec | None] = [None] * out.dim()
    for tensor in tensors:
        offset = out.dim() - tensor.dim()
        if offset < 0:
            raise NotRepresentable("input has more dims than the output")
        for d, spec in enumerate(ctx.specs(tensor)):
            size = out.shape[offset + d]
            if tensor.shape[d] != size or size == 1:
                continue
            if specs[offset + d] is None:
                specs[offset + d] = spec
            else:
                ctx.unify(specs[offset + d], spec)
    ctx.set(out, [s if s is not None else ctx.axes.fresh_spec(out.shape[d], "broadcast")
                  for d, s in enumerate(specs)])


POINTWISE = """
relu relu_ relu6 gelu silu silu_ sigmoid sigmoid_ tanh tanh_ hardswish hardswish_ hardsigmoid
hardtanh hardtanh_ leaky_relu leaky_relu_ elu elu_ selu celu softplus softsign mish tanhshrink
logsigmoid threshold glu_pointwise dropout dropout_ dropout1d dropout2d dropout3d alpha_dropout
feature_alpha_dropout clamp clamp_ clip clamp_min clamp_max abs neg negative exp exp_ log log1p
log2 sqrt rsqrt square sin cos erf erfc sign reciprocal floor ceil round trunc frac sgn
contiguous clone detach detach_ float half double bfloat16 bool long int cpu
nan_to_num logical_not isnan isinf isfinite empty_like full_like rand_like randn_like bitwise_not __neg__ __abs__ __invert__ __pos__ expm1 exp2
add add_ sub sub_ subtract mul mul_ multiply div div_ divide true_divide floor_divide remainder
fmod pow pow_ maximum minimum fmax fmin eq ne lt le gt ge where masked_fill masked_fill_ lerp
logical_and logical_or logical_xor bitwise_and bitwise_or addcmul addcdiv rsub atan2 hypot
copysign xlogy __add__ __radd__ __iadd__ __sub__ __rsub__ __isub__ __mul__ __rmul__ __imul__
__truediv__ __rtruediv__ __itruediv__ __floordiv__ __rfloordiv__ __pow__ __rpow__ __ipow__
__mod__ __and__ __or__ __xor__ __eq__ __ne__ __lt__ __le__ __gt__ __ge__ __iand__ __ior__
""".split()


@rule(*POINTWISE)
def pointwise(ctx, args, kwargs, out):
    outs = _tensors(out)
    if len(outs) != 1:
        raise NotRepresentable("pointwise op with several outputs")
    broadcast(ctx, _tensors(args) + _tensors(list(kwargs.values())), outs[0])


@rule("to", "type", "type_as", "zero_", "fill_", "normal_", "uniform_", "requires_grad_")
def same_as_self(ctx, args, kwargs, out):
    """Same layout as the tensor it is called on; other tensor arguments only give dtype."""
    ctx.set(out, ctx.specs(args[0]))


@rule("new_zeros", "new_ones", "new_empty", "new_full", "new_tensor", "zeros", "ones", "empty",
      "full", "arange", "linspace", "eye", "rand", "randn", "randint", "tensor", "as_tensor",
      "meshgrid", "ones_like", "zeros_like")
def new_tensor(ctx, args, kwargs, out):
    """A new tensor whose values do not come from any input: its dims are its own, fixed."""
    for result in _tensors(out):
        ctx.fresh(result, f"tensor created in {ctx.module_path}")


# -- data movement -----------------------------------------------------------------------------
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
            combined = axes._product(combined, axes.expand(specs[d]))
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
    channels and is updated when they are pruned. Where several dims have that size, the
    graph later picks the one dim that can be pruned, if there is exactly one."""
    module = ctx.current_module
    for name, value in _int_attributes(module).items():
        if value < 2:
            continue
        trusted = HEAD_COUNT.match(name)  # a -1 dim's size is no one's count, unless named so
        dims = [d for d, size in enumerate(out.shape)
                if size == value and (trusted or d not in inferred)]
        if len(dims) == 1:
            ctx.attribute(module, name, specs[dims[0]])
        elif dims:
            ctx.attribute_candidates_for(module, name, [specs[d] for d in dims])


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
    d0 = _arg(args, kwargs, 1, "dim0", 0) % ndim
    d1 = _arg(args, kwargs, 2, "dim1", 1) % ndim
    order[d0], order[d1] = order[d1], order[d0]
    return order


def _movedim_order(args, kwargs, ndim):
    src = _dims(_arg(args, kwargs, 1, "source"), ndim)
    dst = _dims(_arg(args, kwargs, 2, "destination"), ndim)
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


@rule("cat", "concat", "concatenate")
def cat(ctx, args, kwargs, out):
    tensors = [t for t in _arg(args, kwargs, 0, "tensors") if t.numel() or t.dim() > 1]
    dim = _arg(args, kwargs, 1, "dim", 0) % out.dim()
    specs = [ctx.specs(t) for t in tensors]
    for d in range(out.dim()):
        if d != dim:
            for other in specs[1:]:
                ctx.unify(specs[0][d], other[d])
    joined = [segment for s in specs for segment in ctx.axes.expand(s[dim])]
    ctx.set(out, [joined if d == dim else specs[0][d] for d in range(out.dim())])


@rule("stack")
def stack(ctx, args, kwargs, out):
    tensors = list(_arg(args, kwargs, 0, "tensors"))
    dim = _arg(args, kwargs, 1, "dim", 0) % out.dim()
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
    """Chunks are sized from the input, so they stay equal only if pruned alike: tie them."""
    dim, parts = _split_pieces(ctx, args[0], list(out))
    if dim is None:
        return
    if len({ctx.axes.spec_size(p) for p in parts}) > 1:
        ctx.fix(args[0], f"chunks of unequal size in {ctx.module_path}", [dim])
        return
    for part in parts[1:]:
        ctx.unify(parts[0], part)


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
    counts = _attributes_equal_to(ctx.current_module, sizes.pop()) if len(sizes) == 1 else []
    if not counts:
        ctx.fix(args[0], f"split with fixed sizes in {ctx.module_path}", [dim])
        return
    for part in parts[1:]:
        ctx.unify(parts[0], part)
    for name in counts:
        ctx.attribute(ctx.current_module, name, parts[0])


def _attributes_equal_to(module, size: int) -> list[str]:
    """The module's own integer attributes (``split_size``) whose value is ``size``; the
    ones named for splitting when there are several."""
    names = [name for name, value in _int_attributes(module).items() if value == size]
    return [name for name in names if "split" in name] or names


def _int_attributes(module) -> dict[str, int]:
    """A module's public integer attributes: the counts a view or split may be sized by."""
    if module is None:
        return {}
    return {name: value for name, value in vars(module).items()
            if not name.startswith("_") and type(value) is int}


def _cumulative(sizes):
    total = 0
    for size in sizes:
        total += size
        yield total


@rule("unbind")
def unbind(ctx, args, kwargs, out):
    source = args[0]
    dim = _arg(args, kwargs, 1, "dim", 0) % source.dim()
    specs = ctx.specs(source)
    parts = ctx.axes.cut(specs[dim], list(range(1, source.shape[dim])))
    ctx.axes.fix_spec(specs[dim], f"unbind in {ctx.module_path}")
    for piece, part in zip(out, parts):
        ctx.set(piece, specs[:dim] + specs[dim + 1:])


@rule("narrow")
def narrow(ctx, args, kwargs, out):
    source = args[0]
    dim = _arg(args, kwargs, 1, "dim") % source.dim()
    start = int(_arg(args, kwargs, 2, "start"))
    _slice_dims(ctx, source, out, {dim: slice(start, start + out.shape[dim])})


@rule("select")
def select(ctx, args, kwargs, out):
    source = args[0]
    dim = _arg(args, kwargs, 1, "dim") % source.dim()
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
    source = args[0]
    specs = ctx.specs(source)
    offset = out.dim() - source.dim()
    result = [ctx.axes.fresh_spec(out.shape[d], "expanded dim") for d in range(offset)]
    for d in range(source.dim()):
        same = source.shape[d] == out.shape[offset + d]
        result.append(specs[d] if same else ctx.axes.fresh_spec(out.shape[offset + d], "expanded dim"))
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
        dims = _arg(args, kwargs, dims_at, name)
        ctx.fix(source, f"reordering along a dim in {ctx.module_path}", _dims(dims, source.dim()))
        ctx.set(out, ctx.specs(source))

    return along_dims_rule


rule("flip")(_along_dims(1, "dims"))
rule("roll")(_along_dims(2, "dims"))
rule("cumsum", "cumprod")(_along_dims(1, "dim"))


# -- reductions and ops that mix channels -------------------------------------------------------
@rule("sum", "mean", "amax", "amin", "std", "var", "prod", "norm", "logsumexp", "all", "any",
      "argmax", "argmin", "nansum", "nanmean", "max", "min", "median", "std_mean", "var_mean")
def reduction(ctx, args, kwargs, out):
    source = args[0]
    other = _arg(args, kwargs, 1, "other")
    if isinstance(other, torch.Tensor):  # torch.max(a, b) is pointwise
        return pointwise(ctx, args, kwargs, out)
    dim = kwargs.get("dim", args[1] if len(args) > 1 and not isinstance(args[1], (float, str)) else None)
    if dim is not None and not isinstance(dim, (int, list, tuple)):
        dim = None
    dims = _dims(dim, source.dim())
    if not (_normalising(ctx) and dims == [source.dim() - 1]):
        ctx.fix(source, f"reduced over in {ctx.module_path}", dims)
    specs = ctx.specs(source)
    for result in _tensors(out):
        if result.dim() == source.dim():
            ctx.set(result, [[[]] if d in dims else specs[d] for d in range(source.dim())])
        else:
            ctx.set(result, [specs[d] for d in range(source.dim()) if d not in dims])


def is_layer_norm(module) -> bool:
    """A layer or RMS norm over the last dim, by class name (``nn.LayerNorm``,
    ``LlamaRMSNorm``, ``T5LayerNorm`` …): what normalises a transformer's hidden size."""
    return type(module).__name__.lower().endswith(("layernorm", "rmsnorm"))


def _normalising(ctx) -> bool:
    """Inside a layer or RMS norm module written in plain ops (Llama's ``LlamaRMSNorm``), while
    tracing for hidden-size pruning: its statistic over the last dim does not fix that dim."""
    return ctx.normalised_prunable and is_layer_norm(ctx.current_module)


@rule("softmax", "log_softmax", "softmin", "normalize", "local_response_norm")
def softmax(ctx, args, kwargs, out):
    source = args[0]
    dim = _arg(args, kwargs, 1, "dim", 1 if source.dim() > 1 else 0)
    if dim is None:
        dim = -1
    ctx.fix(source, f"normalised over in {ctx.module_path}", [dim % source.dim()])
    ctx.set(out, ctx.specs(source))


# -- spatial ops: channels pass through, the trailing spatial dims are fixed --------------------
def _spatial(k_of: Callable):
    def spatial_rule(ctx, args, kwargs, out):
        source = args[0]
        k = min(k_of(args, kwargs, source), source.dim())
        specs = ctx.specs(source)
        keep = source.dim() - k
        reason = f"spatial dim in {ctx.module_path}"
        ctx.fix(source, reason, list(range(keep, source.dim())))
        for result in _tensors(out):
            ctx.set(result, specs[:keep] + [ctx.axes.fresh_spec(n, reason) for n in result.shape[keep:]])

    return spatial_rule


for _k in (1, 2, 3):
    _names = [f"{p}{_k}d" for p in ("max_pool", "avg_pool", "adaptive_avg_pool", "adaptive_max_pool",
                                   "lp_pool", "fractional_max_pool", "max_pool_with_indices")]
    _names += [f"max_pool{_k}d_with_indices", f"adaptive_max_pool{_k}d_with_indices",
               f"fractional_max_pool{_k}d_with_indices"]
    rule(*_names)(_spatial(lambda a, k, s, n=_k: n))
rule("interpolate", "upsample", "upsample_nearest", "upsample_bilinear", "grid_sample")(
    _spatial(lambda a, k, s: s.dim() - 2))


@rule("pad")
def pad(ctx, args, kwargs, out):
    """Padded dims get new positions; a dim padded by nothing (the channels of a
    channels-last ``F.pad(x, (0, 0, 0, w, 0, h))``) passes through."""
    source, amounts = args[0], list(_arg(args, kwargs, 1, "pad"))
    specs = list(ctx.specs(source))
    reason = f"spatial dim in {ctx.module_path}"
    for i in range(len(amounts) // 2):
        d = source.dim() - 1 - i
        if amounts[2 * i] or amounts[2 * i + 1]:
            ctx.fix(source, reason, [d])
            specs[d] = ctx.axes.fresh_spec(out.shape[d], reason)
    ctx.set(out, specs)


# -- parametrised layers -----------------------------------------------------------------------
def _conv(transposed: bool, k: int):
    def conv_rule(ctx, args, kwargs, out):
        x, weight = args[0], _arg(args, kwargs, 1, "weight")
        bias = _arg(args, kwargs, 2, "bias")
        groups = _arg(args, kwargs, 6, "groups", 1)  # index 6 in both signatures
        c = x.dim() - k - 1
        xs, ws = ctx.specs(x), ctx.specs(weight)
        in_dim, out_dim = (0, 1) if transposed else (1, 0)
        ctx.role(weight, out_dim, "out")
        ctx.role(weight, in_dim, "in")
        if groups == 1:
            if transposed:
                ctx.unify(xs[c], ws[0])
                out_spec = ws[1]
            else:
                ctx.unify(xs[c], ws[1])
                out_spec = ws[0]
        else:
            group_axis = [[ctx.axes.new(groups)]]
            axes = ctx.axes
            if transposed:
                inner_in = axes.fresh_spec(weight.shape[0] // groups)
                ctx.unify(ws[0], axes._product(group_axis, inner_in))
                ctx.unify(xs[c], ws[0])
                out_spec = axes._product(group_axis, axes.expand(ws[1]))
            else:
                inner_out = axes.fresh_spec(weight.shape[0] // groups)
                ctx.unify(ws[0], axes._product(group_axis, inner_out))
                ctx.unify(xs[c], axes._product(group_axis, axes.expand(ws[1])))
                out_spec = ws[0]
            ctx.attribute(ctx.current_module, "groups", group_axis)
            for inner in (ws[1], inner_in if transposed else inner_out):
                axes.factorisations.append((group_axis, inner))
        if bias is not None:
            ctx.unify(ctx.specs(bias)[0], out_spec)
            ctx.role(bias, 0, "out")
        reason = f"spatial dim in {ctx.module_path}"
        spatial = [ctx.axes.fresh_spec(n, reason) for n in out.shape[c + 1:]]
        ctx.fix(x, reason, list(range(c + 1, x.dim())))
        ctx.fix(weight, f"kernel of {ctx.module_path}", list(range(2, weight.dim())))
        ctx.set(out, xs[:c] + [out_spec] + spatial)

    return conv_rule


for _k in (1, 2, 3):
    rule(f"conv{_k}d")(_conv(False, _k))
    rule(f"conv_transpose{_k}d")(_conv(True, _k))


@rule("linear")
def linear(ctx, args, kwargs, out):
    x, weight, bias = args[0], _arg(args, kwargs, 1, "weight"), _arg(args, kwargs, 2, "bias")
    xs, ws = ctx.specs(x), ctx.specs(weight)
    if weight.dim() != 2:
        raise NotRepresentable("linear with a weight that is not 2-d")
    ctx.unify(xs[-1], ws[1])
    ctx.role(weight, 0, "out")
    ctx.role(weight, 1, "in")
    if bias is not None:
        ctx.unify(ctx.specs(bias)[0], ws[0])
        ctx.role(bias, 0, "out")
    ctx.set(out, xs[:-1] + [ws[0]])


@rule("matmul", "mm", "bmm", "__matmul__", "__rmatmul__")
def matmul(ctx, args, kwargs, out):
    a, b = args[0], args[1]
    if a.dim() < 2 or b.dim() < 2:
        raise NotRepresentable("matmul with a 1-d operand")
    sa, sb = ctx.specs(a), ctx.specs(b)
    ctx.unify(sa[-1], sb[-2])  # the contracted channels
    batch = out.dim() - 2
    specs: list[Spec | None] = [None] * batch
    for tensor, tensor_specs in ((a, sa), (b, sb)):
        offset = batch - (tensor.dim() - 2)
        for d in range(tensor.dim() - 2):
            if tensor.shape[d] == out.shape[offset + d] and tensor.shape[d] != 1:
                if specs[offset + d] is None:
                    specs[offset + d] = tensor_specs[d]
                else:
                    ctx.unify(specs[offset + d], tensor_specs[d])
    specs = [s if s is not None else ctx.axes.fresh_spec(out.shape[d], "broadcast")
             for d, s in enumerate(specs)]
    ctx.set(out, specs + [sa[-2], sb[-1]])
    if b.dim() == 2:  # x @ W with W a parameter (GPT-2's Conv1D): W is (in, out)
        ctx.role(b, 0, "in")
        ctx.role(b, 1, "out")


@rule("addmm", "baddbmm")
def addmm(ctx, args, kwargs, out):
    bias, a, b = args[0], args[1], args[2]
    matmul(ctx, (a, b), {}, out)
    broadcast(ctx, [bias, out], out)
    if bias.dim() == 1:
        ctx.role(bias, 0, "out")


@rule("scaled_dot_product_attention")
def attention(ctx, args, kwargs, out):
    q, k, v = args[0], args[1], args[2]
    mask = _arg(args, kwargs, 3, "attn_mask")
    scale = _arg(args, kwargs, 6, "scale")
    sq, sk, sv = ctx.specs(q), ctx.specs(k), ctx.specs(v)
    batch_dims = list(range(q.dim() - 2))
    if _arg(args, kwargs, 7, "enable_gqa", False) and q.dim() >= 3 and q.shape[-3] != k.shape[-3]:
        _group_query_heads(ctx, q, k)
        batch_dims.remove(q.dim() - 3)
        ctx.unify(sk[-3], sv[-3])
    if any(q.shape[d] != k.shape[d] or k.shape[d] != v.shape[d] for d in batch_dims):
        raise NotRepresentable("attention whose q, k, v batch dims differ")
    for d in batch_dims:
        ctx.unify(sq[d], sk[d])
        ctx.unify(sq[d], sv[d])
    ctx.unify(sq[-1], sk[-1])
    ctx.unify(sk[-2], sv[-2])
    reason = f"attention in {ctx.module_path}"
    ctx.axes.fix_spec(sk[-2], reason)
    if scale is None:  # the default scale depends on head_dim, so head_dim must not change
        ctx.axes.fix_spec(sq[-1], f"default attention scale in {ctx.module_path}")
    if isinstance(mask, torch.Tensor):
        ctx.fix(mask, reason)
    ctx.set(out, sq[:-1] + [sv[-1]])


def _group_query_heads(ctx, q, k) -> None:
    """Grouped-query attention: query heads are (kv heads × queries per kv head), row-major.
    The outer factor is tied to the kv heads, so removing a kv head removes its query heads;
    the number of queries per kv head stays as it is."""
    kv_heads = k.shape[-3]
    if q.shape[-3] % kv_heads:
        raise NotRepresentable("query heads not a multiple of key/value heads")
    segments = ctx.axes.expand(ctx.specs(q)[-3])
    if len(segments) != 1:
        raise NotRepresentable("grouped-query heads made by a concatenation")
    heads, per_group = ctx.axes.split_segment(segments[0], q.shape[-3] // kv_heads)
    ctx.axes.fix_spec([per_group], f"query heads per key/value head in {ctx.module_path}")
    ctx.unify([heads], ctx.specs(k)[-3])


@rule("einsum")
def einsum(ctx, args, kwargs, out):
    """Dims with the same letter are the same channels; summed letters are contracted."""
    equation = args[0].replace(" ", "")
    operands = list(args[1]) if len(args) == 2 and isinstance(args[1], (list, tuple)) else list(args[1:])
    if "..." in equation or "->" not in equation:
        raise NotRepresentable("einsum without an explicit output or with an ellipsis")
    inputs, output = equation.split("->")
    by_letter: dict[str, Spec] = {}
    for letters, operand in zip(inputs.split(","), operands):
        for letter, spec, size in zip(letters, ctx.specs(operand), operand.shape):
            if size == 1:
                continue
            if letter in by_letter:
                ctx.unify(by_letter[letter], spec)
            else:
                by_letter[letter] = spec
    ctx.set(out, [by_letter.get(letter, [[]]) for letter in output])


@rule("multi_head_attention_forward")
def multi_head_attention(ctx, args, kwargs, out):
    """``nn.MultiheadAttention`` has heads: its q, k and v projections (thirds of the packed
    ``in_proj_weight``, or ``q/k/v_proj_weight`` when key and value have their own widths) are
    each heads × head_dim, as are ``bias_k``/``bias_v``, and its ``out_proj`` reads heads ×
    head_dim; head_dim keeps its size (the default scale depends on it). What it reads and
    writes follows the query, key and value. Anything else is left whole: every dim it touches
    is fixed."""
    names = ("query", "key", "value", "embed_dim_to_check", "num_heads", "in_proj_weight",
             "in_proj_bias", "bias_k", "bias_v", "add_zero_attn", "dropout_p",
             "out_proj_weight", "out_proj_bias")
    given = {name: _arg(args, kwargs, i, name) for i, name in enumerate(names)}
    results = _tensors(out)
    projections = _attention_projections(ctx, given, kwargs)
    if projections is None:
        reason = f"nn.MultiheadAttention {ctx.module_path}"
        for tensor in _tensors(list(args)) + _tensors(list(kwargs.values())):
            ctx.fix(tensor, reason)
        ctx.set(results[0], ctx.specs(given["query"]))
        for result in results[1:]:
            ctx.fresh(result, reason)
        return
    query, heads = given["query"], given["num_heads"]
    width = query.shape[-1]
    fixed = f"default attention scale in {ctx.module_path}"
    head = ctx.axes.new(heads)
    qk_dim, v_dim = ctx.axes.new(width // heads, fixed), ctx.axes.new(width // heads, fixed)
    inner = {"query": [[head, qk_dim]], "key": [[head, qk_dim]], "value": [[head, v_dim]]}
    for source, rows, columns in projections:  # rows: the inner spec of that third
        ctx.unify(rows, inner[source])
        ctx.unify(columns, ctx.specs(given[source])[-1])
    for weight in {id(w): w for w in _weights(given, kwargs)}.values():
        ctx.role(weight, 0, "out")
        ctx.role(weight, 1, "in")
    if given["in_proj_bias"] is not None:
        bias = ctx.specs(given["in_proj_bias"])[0]
        for part, source in zip(ctx.axes.cut(bias, [width, 2 * width]), inner):
            ctx.unify(part, inner[source])
    for name, source in (("bias_k", "key"), ("bias_v", "value")):
        if given[name] is not None:  # an extra learned key/value token, per head
            ctx.unify(ctx.specs(given[name])[-1], inner[source])
    projection = ctx.specs(given["out_proj_weight"])
    ctx.unify(projection[1], inner["value"])
    ctx.role(given["out_proj_weight"], 0, "out")
    ctx.role(given["out_proj_weight"], 1, "in")
    if given["out_proj_bias"] is not None:
        ctx.unify(ctx.specs(given["out_proj_bias"])[0], projection[0])
    ctx.attribute(ctx.current_module, "num_heads", [[head]])
    # the widths it reads and writes (they narrow only with the hidden size)
    for attribute, source in (("embed_dim", "query"), ("kdim", "key"), ("vdim", "value")):
        ctx.attribute(ctx.current_module, attribute, ctx.specs(given[source])[-1])
    ctx.set(results[0], ctx.specs(query)[:-1] + [projection[0]])
    for result in results[1:]:
        ctx.fresh(result, f"attention weights of {ctx.module_path}")


def _weights(given: dict, kwargs: dict) -> list[torch.Tensor]:
    if kwargs.get("use_separate_proj_weight", False):
        return [kwargs[f"{p}_proj_weight"] for p in "qkv"]
    return [given["in_proj_weight"]]


def _attention_projections(ctx, given: dict, kwargs: dict):
    """``(source, rows, columns)`` for the q, k and v projections: which input each reads and
    the specs of its output rows and input columns; None where the module is left whole."""
    query, key, value = given["query"], given["key"], given["value"]
    width, heads = query.shape[-1], given["num_heads"]
    if not (all(isinstance(t, torch.Tensor) and t.dim() == query.dim() for t in (key, value))
            and width % heads == 0
            and kwargs.get("static_k") is None and kwargs.get("static_v") is None):
        return None
    sources = ("query", "key", "value")
    if kwargs.get("use_separate_proj_weight", False):
        weights = _weights(given, kwargs)
        if any(w is None or w.shape[0] != width for w in weights):
            return None
        return [(source, ctx.specs(w)[0], ctx.specs(w)[1]) for source, w in zip(sources, weights)]
    packed = given["in_proj_weight"]
    if (packed is None or packed.shape[0] != 3 * width
            or any(t.shape[-1] != width for t in (key, value))):
        return None
    rows = ctx.axes.cut(ctx.specs(packed)[0], [width, 2 * width])
    return [(source, part, ctx.specs(packed)[1]) for source, part in zip(sources, rows)]


@rule("embedding")
def embedding(ctx, args, kwargs, out):
    ids, weight = args[0], _arg(args, kwargs, 1, "weight")
    ws = ctx.specs(weight)
    ctx.fix(weight, f"vocabulary of {ctx.module_path}", [0])
    ctx.role(weight, 1, "out")
    ctx.set(out, ctx.specs(ids) + [ws[1]])


def _per_channel(ctx, x, tensors, role: str = "norm") -> None:
    channel = ctx.specs(x)[1 if x.dim() > 1 else 0]
    for tensor in tensors:
        if isinstance(tensor, torch.Tensor) and tensor.numel() > 1:
            ctx.unify(channel, ctx.specs(tensor)[0])
            ctx.role(tensor, 0, role)


@rule("batch_norm", "instance_norm")
def per_channel_norm(ctx, args, kwargs, out):
    """Batch and instance norm: every statistic and affine tensor is per channel."""
    x = args[0]
    tensors = [_arg(args, kwargs, i, n) for i, n in
               enumerate(("running_mean", "running_var", "weight", "bias"), start=1)]
    _per_channel(ctx, x, tensors)
    ctx.set(out, ctx.specs(x))


@rule("prelu")
def prelu(ctx, args, kwargs, out):
    _per_channel(ctx, args[0], [_arg(args, kwargs, 1, "weight")])
    ctx.set(out, ctx.specs(args[0]))


@rule("group_norm")
def group_norm(ctx, args, kwargs, out):
    x, groups = args[0], _arg(args, kwargs, 1, "num_groups")
    _per_channel(ctx, x, [_arg(args, kwargs, 2, "weight"), _arg(args, kwargs, 3, "bias")])
    channel = ctx.specs(x)[1]
    group_axis = ctx.axes.fresh_spec(groups)
    within = ctx.axes.fresh_spec(x.shape[1] // groups, f"GroupNorm statistics in {ctx.module_path}")
    ctx.unify(channel, ctx.axes._product(group_axis, within))
    if groups > 1:
        ctx.attribute(ctx.current_module, "num_groups", group_axis)
        ctx.axes.factorisations.append((group_axis, within))
    else:
        ctx.axes.fix_spec(channel, f"GroupNorm statistics in {ctx.module_path}")
    ctx.set(out, ctx.specs(x))


@rule("layer_norm", "rms_norm")
def layer_norm(ctx, args, kwargs, out):
    x, shape = args[0], _arg(args, kwargs, 1, "normalized_shape")
    n = len(shape) if isinstance(shape, (list, tuple)) else 1
    xs = ctx.specs(x)
    for tensor in (_arg(args, kwargs, 2, "weight"), _arg(args, kwargs, 3, "bias")):
        if isinstance(tensor, torch.Tensor):
            for d, spec in enumerate(ctx.specs(tensor)):
                ctx.unify(xs[x.dim() - n + d], spec)
                ctx.role(tensor, d, "norm")
    if not ctx.normalised_prunable:
        reason = f"normalised by {ctx.module_path}"
        for d in range(x.dim() - n, x.dim()):
            ctx.axes.fix_spec(xs[d], reason)
    ctx.set(out, xs)
