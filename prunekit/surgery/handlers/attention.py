"""``nn.MultiheadAttention`` after pruning.

Its fused forward requires the inner width (heads × head_dim) to equal ``embed_dim``, the width
of its input. Once heads are removed the inner width is smaller (once the hidden size is, the
input is narrower), so the module becomes a ``PrunedMultiheadAttention``: the same parameters
and attributes, with a forward that computes attention from its projections (packed or
separate) at whatever widths they have. A fresh model replaying the plan (``pk.load``) is
converted the same way.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .registry import register


class PrunedMultiheadAttention(nn.MultiheadAttention):
    """``nn.MultiheadAttention`` whose heads were pruned or whose embedding narrowed (packed or
    separate q/k/v, ``bias_k``/``bias_v``, ``add_zero_attn``; self- or cross-attention)."""

    def forward(self, query, key, value, key_padding_mask=None, need_weights=True,
                attn_mask=None, average_attn_weights=True, is_causal=False):
        batched = query.dim() == 3

        def batch_major(t: torch.Tensor) -> torch.Tensor:  # (batch, length, embed)
            t = t if batched else t.unsqueeze(1 if not self.batch_first else 0)
            return t if self.batch_first else t.transpose(0, 1)

        weights_qkv = (self.in_proj_weight.chunk(3) if self.in_proj_weight is not None
                       else (self.q_proj_weight, self.k_proj_weight, self.v_proj_weight))
        head_dim = weights_qkv[0].shape[0] // self.num_heads
        biases_qkv = (self.in_proj_bias.chunk(3) if self.in_proj_bias is not None
                      else (None, None, None))
        q, k, v = (F.linear(batch_major(t), w, b)
                   for t, w, b in zip((query, key, value), weights_qkv, biases_qkv))
        k, v, extra = self._extra_key_value(k, v)
        q, k, v = (t.unflatten(-1, (self.num_heads, head_dim)).transpose(1, 2) for t in (q, k, v))
        batch, length, sources = q.shape[0], q.shape[2], k.shape[2]
        mask = _additive_mask(attn_mask, key_padding_mask, q.dtype, batch, sources - extra)
        if mask is not None and extra:  # the added tokens are never masked
            mask = F.pad(mask, (0, extra))
        scores = q @ k.transpose(-2, -1) / head_dim ** 0.5
        if is_causal and mask is None:
            causal = torch.ones(length, sources, dtype=torch.bool, device=q.device).triu(1)
            scores = scores.masked_fill(causal, float("-inf"))
        if mask is not None:
            scores = scores + mask
        weights = scores.softmax(dim=-1)
        weights_used = F.dropout(weights, self.dropout, self.training)
        out = (weights_used @ v).transpose(1, 2).reshape(batch, length, -1)
        out = self.out_proj(out)
        if not self.batch_first:
            out = out.transpose(0, 1)
        if not batched:
            out = out.squeeze(1 if not self.batch_first else 0)
        if not need_weights:
            return out, None
        if not average_attn_weights:
            return out, weights
        # the mean over heads as a sum over the count: a mean would fix the head dim in a
        # later trace (it changes with the number of heads), and these weights are seldom
        # read, so heads could no longer be pruned after filters were
        return out, weights.sum(1) / self.num_heads

    def _extra_key_value(self, k: torch.Tensor, v: torch.Tensor):
        """The learned ``bias_k``/``bias_v`` token and the ``add_zero_attn`` zero token, appended
        to the projected keys and values (batch, sources, inner); and how many were added."""
        extra = 0
        if self.bias_k is not None and self.bias_v is not None:
            k = torch.cat([k, self.bias_k.reshape(1, 1, -1).expand(k.shape[0], 1, -1)], 1)
            v = torch.cat([v, self.bias_v.reshape(1, 1, -1).expand(v.shape[0], 1, -1)], 1)
            extra += 1
        if self.add_zero_attn:
            k = torch.cat([k, k.new_zeros(k.shape[0], 1, k.shape[2])], 1)
            v = torch.cat([v, v.new_zeros(v.shape[0], 1, v.shape[2])], 1)
            extra += 1
        return k, v, extra


def _additive_mask(attn_mask, key_padding_mask, dtype, batch: int, sources: int):
    """Both masks as one additive float mask broadcastable to (batch, heads, L, S)."""
    mask = None
    for part, shape in ((attn_mask, None), (key_padding_mask, (batch, 1, 1, sources))):
        if part is None:
            continue
        if part.dim() == 3:
            raise ValueError("PrunedMultiheadAttention: per-head 3-d attn_mask is not supported "
                             "after heads were removed")
        if part.dtype == torch.bool:
            part = torch.zeros(part.shape, dtype=dtype).masked_fill(part, float("-inf"))
        part = part.to(dtype)
        if shape is not None:
            part = part.view(shape)
        mask = part if mask is None else mask + part
    return mask


@register(nn.MultiheadAttention)
def sync_multihead_attention(module: nn.MultiheadAttention) -> None:
    packed = module.in_proj_weight
    inner = packed.shape[0] // 3 if packed is not None else module.q_proj_weight.shape[0]
    module.head_dim = inner // module.num_heads
    if inner != module.embed_dim and type(module) is nn.MultiheadAttention:
        module.__class__ = PrunedMultiheadAttention
        # fused kernels elsewhere (nn.TransformerEncoderLayer's fast path) read the packed
        # weight as 3 × embed_dim only when this is set
        module._qkv_same_embed_dim = False


@register(nn.Transformer)
def sync_transformer(module: nn.Transformer) -> None:
    """Its forward checks its inputs against ``d_model``: the width its attention reads."""
    layers = getattr(module.encoder, "layers", None)
    if layers:
        module.d_model = layers[0].self_attn.embed_dim
