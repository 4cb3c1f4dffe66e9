"""Embeddings and normalisation layers: a norm's scale and shift belong to the channels it
normalises."""

from __future__ import annotations

import torch

from .base import (
    arg,
    rule,
)


@rule("embedding")
def embedding(ctx, args, kwargs, out):
    ids, weight = args[0], arg(args, kwargs, 1, "weight")
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
    tensors = [arg(args, kwargs, i, n) for i, n in
               enumerate(("running_mean", "running_var", "weight", "bias"), start=1)]
    _per_channel(ctx, x, tensors)
    module = ctx.current_module
    if (all(t is None for t in tensors) and x.dim() > 1
            and getattr(module, "num_features", None) == x.shape[1]):
        # no tensor of its own will be sliced, so no handler runs: keep its count true here
        ctx.attribute(module, "num_features", ctx.specs(x)[1])
    ctx.set(out, ctx.specs(x))


@rule("prelu")
def prelu(ctx, args, kwargs, out):
    _per_channel(ctx, args[0], [arg(args, kwargs, 1, "weight")])
    ctx.set(out, ctx.specs(args[0]))


@rule("group_norm")
def group_norm(ctx, args, kwargs, out):
    x, groups = args[0], arg(args, kwargs, 1, "num_groups")
    _per_channel(ctx, x, [arg(args, kwargs, 2, "weight"), arg(args, kwargs, 3, "bias")])
    channel = ctx.specs(x)[1]
    group_axis = ctx.axes.fresh_spec(groups)
    within = ctx.axes.fresh_spec(x.shape[1] // groups, f"GroupNorm statistics in {ctx.module_path}")
    ctx.unify(channel, ctx.axes.product(group_axis, within))
    if groups > 1:
        ctx.attribute(ctx.current_module, "num_groups", group_axis)
        ctx.axes.factorisations.append((group_axis, within))
    else:
        ctx.axes.fix_spec(channel, f"GroupNorm statistics in {ctx.module_path}")
    ctx.set(out, ctx.specs(x))


@rule("layer_norm", "rms_norm")
def layer_norm(ctx, args, kwargs, out):
    x, shape = args[0], arg(args, kwargs, 1, "normalized_shape")
    n = len(shape) if isinstance(shape, (list, tuple)) else 1
    xs = ctx.specs(x)
    for tensor in (arg(args, kwargs, 2, "weight"), arg(args, kwargs, 3, "bias")):
        if isinstance(tensor, torch.Tensor):
            for d, spec in enumerate(ctx.specs(tensor)):
                ctx.unify(xs[x.dim() - n + d], spec)
                ctx.role(tensor, d, "norm")
    if not ctx.normalised_prunable:
        reason = f"normalised by {ctx.module_path}"
        for d in range(x.dim() - n, x.dim()):
            ctx.axes.fix_spec(xs[d], reason)
    ctx.set(out, xs)
