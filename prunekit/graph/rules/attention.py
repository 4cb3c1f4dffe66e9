"""Attention: scaled dot-product attention ties queries, keys and values head by head (and
each key/value head to its query heads in grouped-query attention); ``nn.MultiheadAttention``'s
functional form describes its packed or separate projections."""

from __future__ import annotations

import torch
from torch import nn

from ..axes import NotRepresentable
from .base import (
    arg,
    rule,
    tensors_of,
)


@rule("scaled_dot_product_attention")
def attention(ctx, args, kwargs, out):
    q, k, v = args[0], args[1], args[2]
    mask = arg(args, kwargs, 3, "attn_mask")
    scale = arg(args, kwargs, 6, "scale")
    sq, sk, sv = ctx.specs(q), ctx.specs(k), ctx.specs(v)
    batch_dims = list(range(q.dim() - 2))
    if arg(args, kwargs, 7, "enable_gqa", False) and q.dim() >= 3 and q.shape[-3] != k.shape[-3]:
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
        # and code that leaves the scale to torch tends to read one head size off a tensor
        # for all three views (diffusers: ``key.shape[-1] // attn.heads``), which a value
        # head size pruned on its own would no longer match; code that passes its own scale
        # keeps a ``head_dim`` count, which the view rule follows
        ctx.axes.fix_spec(sv[-1], f"default attention scale in {ctx.module_path}")
    if isinstance(mask, torch.Tensor):
        _mask_follows_scores(ctx, mask, q, reason)
    ctx.set(out, sq[:-1] + [sv[-1]])


def _mask_follows_scores(ctx, mask, q, reason: str) -> None:
    """A float mask is added to the scores (batch…, heads, queries, keys), broadcasting from
    the right: a dim it has in full is the scores' dim, so a per-head bias (T5's relative
    position bias, ALiBi slopes) loses the pruned heads with them. Query and key positions
    are fixed above; a broadcast dim (size 1) carries no channel."""
    sm, sq = ctx.specs(mask), ctx.specs(q)
    for offset in range(1, mask.dim() + 1):
        if offset > 2 and offset <= q.dim() and mask.shape[-offset] == q.shape[-offset] > 1:
            ctx.unify(sm[-offset], sq[-offset])
        else:
            ctx.axes.fix_spec(sm[-offset], reason)


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


@rule("multi_head_attention_forward")
def multi_head_attention(ctx, args, kwargs, out):
    """``nn.MultiheadAttention`` has heads: its q, k and v projections (thirds of the packed
    ``in_proj_weight``, or ``q/k/v_proj_weight`` when key and value have their own widths) are
    each heads × head_dim, as are ``bias_k``/``bias_v``, and its ``out_proj`` reads heads ×
    head_dim; head_dim keeps its size (the default scale depends on it). Outside
    ``nn.MultiheadAttention`` (whose handler lets the inner width differ from the input's),
    the query's width is heads × head_dim too. What it reads and
    writes follows the query, key and value. Anything else is left whole: every dim it touches
    is fixed."""
    names = ("query", "key", "value", "embed_dim_to_check", "num_heads", "in_proj_weight",
             "in_proj_bias", "bias_k", "bias_v", "add_zero_attn", "dropout_p",
             "out_proj_weight", "out_proj_bias")
    given = {name: arg(args, kwargs, i, name) for i, name in enumerate(names)}
    results = tensors_of(out)
    projections = _attention_projections(ctx, given, kwargs)
    if projections is None:
        reason = f"nn.MultiheadAttention {ctx.module_path}"
        for tensor in tensors_of(list(args)) + tensors_of(list(kwargs.values())):
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
    if not isinstance(ctx.current_module, nn.MultiheadAttention):
        # called by a module of its own (CLIP's attention pooling), which no handler
        # rewrites: the function computes head_dim = query width // num_heads and merges
        # the heads back to the query's width, so all three have the query's width in
        # heads of one size, and that width narrows only by whole heads
        ctx.unify(inner["value"], inner["query"])
        ctx.unify(ctx.specs(query)[-1], inner["query"])
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
