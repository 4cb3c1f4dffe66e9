"""Reductions and ops that mix channels: the dim they mix over is fixed.

Ops that mix channels non-linearly (normalising over a dim, softmax, mean/max over a dim) fix
that dim: removing a channel there would change the other channels' values, so masked and
pruned models would disagree.
"""

from __future__ import annotations

import torch

from .base import (
    arg,
    dims_of,
    rule,
    tensors_of,
)
from .elementwise import pointwise


# -- reductions and ops that mix channels -------------------------------------------------------
@rule("mean", "amax", "amin", "std", "var", "prod", "logsumexp", "all", "any",
      "argmax", "argmin", "nanmean", "max", "min", "median", "std_mean", "var_mean")
def reduction(ctx, args, kwargs, out):
    source = args[0]
    other = arg(args, kwargs, 1, "other")
    if isinstance(other, torch.Tensor):  # torch.max(a, b) is pointwise
        return pointwise(ctx, args, kwargs, out)
    dim = kwargs.get("dim", args[1] if len(args) > 1 and not isinstance(args[1], (float, str)) else None)
    _reduced(ctx, source, dim, out, fix=True)


@rule("sum", "nansum")
def zero_preserving_sum(ctx, args, kwargs, out):
    """A sum over channels is the same without channels that are zero: the dim stays
    prunable, exact where the removed channels are zero in the masked model (a producer's
    zeroed filters), which the check confirms or the group is left alone."""
    dim = kwargs.get("dim", args[1] if len(args) > 1 else None)
    _reduced(ctx, args[0], dim, out, fix=False)


@rule("norm")
def zero_preserving_norm(ctx, args, kwargs, out):
    """A p-norm (p > 0, Frobenius, infinity) over channels is unchanged by channels that are
    zero, as a sum is; other norms (p <= 0, nuclear) fix the dim."""
    p = arg(args, kwargs, 1, "p", "fro")
    dim = arg(args, kwargs, 2, "dim", None)
    positive = p == "fro" or (isinstance(p, (int, float)) and p > 0)
    _reduced(ctx, args[0], dim, out, fix=not positive)


def _reduced(ctx, source, dim, out, fix: bool) -> None:
    if dim is not None and not isinstance(dim, (int, list, tuple)):
        dim = None
    dims = dims_of(dim, source.dim())
    if fix and not (_normalising(ctx) and dims == [source.dim() - 1]):
        ctx.fix(source, f"reduced over in {ctx.module_path}", dims)
    specs = ctx.specs(source)
    for result in tensors_of(out):
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


@rule("normalize")
def normalize(ctx, args, kwargs, out):
    """``x / ||x||_p`` over a dim: for p > 0 a channel that is zero stays zero and does not
    change the norm, so the dim stays prunable as through an elementwise op (exact where the
    masked model's removed channels are zero, which the check confirms)."""
    p = arg(args, kwargs, 1, "p", 2.0)
    if isinstance(p, (int, float)) and p > 0:
        ctx.set(out, ctx.specs(args[0]))
        return
    softmax(ctx, (args[0],), {"dim": arg(args, kwargs, 2, "dim", 1)}, out)


@rule("softmax", "log_softmax", "softmin", "local_response_norm")
def softmax(ctx, args, kwargs, out):
    source = args[0]
    dim = arg(args, kwargs, 1, "dim", 1 if source.dim() > 1 else 0)
    if dim is None:
        dim = -1
    ctx.fix(source, f"normalised over in {ctx.module_path}", [dim % source.dim()])
    ctx.set(out, ctx.specs(source))
