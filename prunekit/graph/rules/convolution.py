"""Pooling, padding and convolutions: channels pass through spatial ops; a convolution ties
its weight to its input and output channels, group by group."""

from __future__ import annotations

from typing import Callable

from .base import (
    arg,
    rule,
    tensors_of,
)


# -- spatial ops: channels pass through, the trailing spatial dims are fixed --------------------
def _spatial(k_of: Callable):
    def spatial_rule(ctx, args, kwargs, out):
        source = args[0]
        k = min(k_of(args, kwargs, source), source.dim())
        specs = ctx.specs(source)
        keep = source.dim() - k
        reason = f"spatial dim in {ctx.module_path}"
        ctx.fix(source, reason, list(range(keep, source.dim())))
        for result in tensors_of(out):
            ctx.set(result, specs[:keep] + [ctx.axes.fresh_spec(n, reason) for n in result.shape[keep:]])

    return spatial_rule


for _k in (1, 2, 3):
    _names = [f"{p}{_k}d" for p in ("max_pool", "avg_pool", "adaptive_avg_pool", "adaptive_max_pool",
                                   "lp_pool", "fractional_max_pool", "max_pool_with_indices")]
    _names += [f"max_pool{_k}d_with_indices", f"adaptive_max_pool{_k}d_with_indices",
               f"fractional_max_pool{_k}d_with_indices"]
    rule(*_names)(_spatial(lambda a, k, s, n=_k: n))
rule("interpolate", "upsample", "upsample_nearest", "upsample_bilinear")(
    _spatial(lambda a, k, s: s.dim() - 2))


@rule("grid_sample")
def grid_sample(ctx, args, kwargs, out):
    """``grid_sample(input (N, C, *in), grid (N, *out, k))``: each batch item is sampled at
    its own grid, so the grid's batch is the input's (deformable attention flattens heads
    into it); the output has the input's channels at the grid's positions."""
    source, grid = args[0], arg(args, kwargs, 1, "grid")
    specs, grid_specs = ctx.specs(source), ctx.specs(grid)
    reason = f"spatial dim in {ctx.module_path}"
    ctx.fix(source, reason, list(range(2, source.dim())))
    ctx.fix(grid, f"sampling coordinates in {ctx.module_path}", [grid.dim() - 1])
    ctx.unify(specs[0], grid_specs[0])
    ctx.set(out, specs[:2] + grid_specs[1:-1])


@rule("pad")
def pad(ctx, args, kwargs, out):
    """Padded dims get new positions; a dim padded by nothing (the channels of a
    channels-last ``F.pad(x, (0, 0, 0, w, 0, h))``) passes through."""
    source, amounts = args[0], list(arg(args, kwargs, 1, "pad"))
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
        x, weight = args[0], arg(args, kwargs, 1, "weight")
        bias = arg(args, kwargs, 2, "bias")
        groups = arg(args, kwargs, 6, "groups", 1)  # index 6 in both signatures
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
                ctx.unify(ws[0], axes.product(group_axis, inner_in))
                ctx.unify(xs[c], ws[0])
                out_spec = axes.product(group_axis, axes.expand(ws[1]))
            else:
                inner_out = axes.fresh_spec(weight.shape[0] // groups)
                ctx.unify(ws[0], axes.product(group_axis, inner_out))
                ctx.unify(xs[c], axes.product(group_axis, axes.expand(ws[1])))
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
