"""A seeded generator of random convolutional and attention networks for the fuzz test.

Each seed gives one architecture: a stem, then a random sequence of blocks (plain, grouped
and depthwise convolutions, residual adds, concatenations, channel splits, shuffles, attention
and LSTM/GRU layers over spatial tokens, several normalisations), then one to three heads whose outputs come back
in one of several structures (a tensor, a tuple, a dict, a dataclass, a named tuple).
"""

from __future__ import annotations

import random
from collections import namedtuple
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F


@dataclass
class Outputs:
    logits: torch.Tensor
    extra: tuple


Pair = namedtuple("Pair", "first rest")


def _norm(rng: random.Random, channels: int) -> nn.Module:
    choice = rng.choice(["batch", "group", "instance", "none"])
    if choice == "batch":
        return nn.BatchNorm2d(channels)
    if choice == "group":
        groups = rng.choice([g for g in (1, 2, 4) if channels % g == 0])
        return nn.GroupNorm(groups, channels)
    if choice == "instance":
        return nn.InstanceNorm2d(channels, affine=True)
    return nn.Identity()


def _act(rng: random.Random) -> nn.Module:
    return rng.choice([nn.ReLU, nn.GELU, nn.SiLU, nn.Hardswish])()


class ConvBlock(nn.Module):
    """conv (plain, grouped or depthwise) → norm → activation."""

    def __init__(self, rng: random.Random, channels: int):
        super().__init__()
        kind = rng.choice(["plain", "plain", "grouped", "depthwise"])
        if kind == "grouped" and channels % 2 == 0:
            out, groups = rng.choice([channels, 2 * channels]), 2
        elif kind == "depthwise":
            out, groups = channels * rng.choice([1, 2]), channels
        else:
            out, groups = rng.choice([4, 6, 8, 12, 16]), 1
        kernel = rng.choice([1, 3])
        self.conv = nn.Conv2d(channels, out, kernel, padding=kernel // 2, groups=groups,
                              bias=rng.random() < 0.5)
        self.norm, self.act = _norm(rng, out), _act(rng)
        self.out_channels = out

    def forward(self, x):
        return self.act(self.norm(self.conv(x)))


class Residual(nn.Module):
    """x + conv(act(conv(x))), optionally with a 1x1 projection on the shortcut."""

    def __init__(self, rng: random.Random, channels: int):
        super().__init__()
        hidden = rng.choice([4, 8, 12])
        out = channels if rng.random() < 0.7 else rng.choice([8, 16])
        self.body = nn.Sequential(nn.Conv2d(channels, hidden, 3, padding=1), _norm(rng, hidden),
                                  _act(rng), nn.Conv2d(hidden, out, 3, padding=1))
        self.shortcut = nn.Identity() if out == channels else nn.Conv2d(channels, out, 1)
        self.out_channels = out

    def forward(self, x):
        return self.shortcut(x) + self.body(x)


class Concat(nn.Module):
    """Two branches of one input, concatenated along channels (with the input, sometimes)."""

    def __init__(self, rng: random.Random, channels: int):
        super().__init__()
        a, b = rng.choice([4, 8]), rng.choice([4, 6, 8])
        self.a = nn.Conv2d(channels, a, 1)
        self.b = nn.Sequential(nn.Conv2d(channels, b, 3, padding=1), _act(rng))
        self.keep_input = rng.random() < 0.5
        self.out_channels = a + b + (channels if self.keep_input else 0)

    def forward(self, x):
        parts = [self.a(x), self.b(x)] + ([x] if self.keep_input else [])
        return torch.cat(parts, dim=1)


class SplitMerge(nn.Module):
    """Split the channels in two, transform one half, then concatenate or add them."""

    def __init__(self, rng: random.Random, channels: int):
        super().__init__()
        self.half = channels // 2
        rest = channels - self.half
        self.add = self.half == rest and rng.random() < 0.5
        self.conv = nn.Conv2d(self.half, rest if self.add else self.half, 3, padding=1)
        self.out_channels = rest if self.add else channels

    def forward(self, x):
        first, second = torch.split(x, [self.half, x.shape[1] - self.half], dim=1)
        changed = self.conv(first)
        return changed + second if self.add else torch.cat([changed, second], dim=1)


class Shuffle(nn.Module):
    """A ShuffleNet channel shuffle after a grouped 1x1 convolution."""

    def __init__(self, rng: random.Random, channels: int):
        super().__init__()
        out = rng.choice([8, 12, 16])
        self.conv = nn.Conv2d(channels, out, 1)
        self.groups = 2
        self.out_channels = out

    def forward(self, x):
        x = self.conv(x)
        b, c, h, w = x.shape
        return x.view(b, self.groups, c // self.groups, h, w).transpose(1, 2).reshape(b, c, h, w)


class Attention(nn.Module):
    """Self-attention over the spatial positions as tokens, with a residual connection."""

    def __init__(self, rng: random.Random, channels: int):
        super().__init__()
        self.width = rng.choice([8, 16])
        self.heads = rng.choice([1, 2, 4])
        self.into = nn.Conv2d(channels, self.width, 1)
        self.norm = nn.LayerNorm(self.width)
        self.custom = rng.random() < 0.5
        if self.custom:
            self.qkv = nn.Linear(self.width, 3 * self.width)
            self.proj = nn.Linear(self.width, self.width)
        else:
            self.attn = nn.MultiheadAttention(self.width, self.heads, batch_first=True)
        self.out_channels = self.width

    def forward(self, x):
        x = self.into(x)
        b, c, h, w = x.shape
        tokens = x.flatten(2).transpose(1, 2)
        normed = self.norm(tokens)
        if self.custom:
            q, k, v = self.qkv(normed).chunk(3, dim=-1)
            split = [t.reshape(b, h * w, self.heads, -1).transpose(1, 2) for t in (q, k, v)]
            mixed = F.scaled_dot_product_attention(*split).transpose(1, 2).reshape(b, h * w, -1)
            attended = self.proj(mixed)
        else:
            attended = self.attn(normed, normed, normed, need_weights=False)[0]
        return (tokens + attended).transpose(1, 2).reshape(b, c, h, w)


class Recurrent(nn.Module):
    """An LSTM or GRU over the spatial positions as a sequence (stacked or bidirectional)."""

    def __init__(self, rng: random.Random, channels: int):
        super().__init__()
        kind = rng.choice([nn.LSTM, nn.GRU])
        hidden = rng.choice([4, 8])
        self.rnn = kind(channels, hidden, num_layers=rng.choice([1, 2]), batch_first=True,
                        bidirectional=rng.random() < 0.5)
        self.out_channels = hidden * (2 if self.rnn.bidirectional else 1)

    def forward(self, x):
        b, c, h, w = x.shape
        sequence, _ = self.rnn(x.flatten(2).transpose(1, 2))
        return sequence.transpose(1, 2).reshape(b, -1, h, w)


BLOCKS = [ConvBlock, ConvBlock, Residual, Concat, SplitMerge, Shuffle, Attention, Recurrent]


class RandomNet(nn.Module):
    def __init__(self, seed: int):
        super().__init__()
        rng = random.Random(seed)
        self.seed = seed
        stem = rng.choice([8, 12, 16])
        self.stem = nn.Sequential(nn.Conv2d(3, stem, 3, padding=1), _act(rng))
        blocks, channels = [], stem
        for _ in range(rng.randint(2, 5)):
            block = rng.choice(BLOCKS)(rng, channels)
            blocks.append(block)
            channels = block.out_channels
        self.blocks = nn.Sequential(*blocks)
        self.classes = rng.choice([3, 4, 10])
        self.flatten_head = rng.random() < 0.3  # flatten the whole map, else pool it
        width = channels * (16 if self.flatten_head else 1)
        self.head = nn.Linear(width, self.classes)
        self.aux = nn.Linear(channels, 2) if rng.random() < 0.4 else None
        self.return_features = rng.random() < 0.3
        self.structure = rng.choice(["tensor", "tuple", "dict", "dataclass", "namedtuple"])

    def forward(self, x):
        features = self.blocks(self.stem(x))
        pooled = features.mean((2, 3))
        if self.flatten_head:
            logits = self.head(F.adaptive_avg_pool2d(features, 4).flatten(1))
        else:
            logits = self.head(pooled)
        extra = []
        if self.aux is not None:
            extra.append(torch.sigmoid(self.aux(pooled)))  # a [0, 1] score beside logits
        if self.return_features:
            extra.append(features)
        if self.structure == "tensor" or not extra:
            return logits
        if self.structure == "tuple":
            return (logits, *extra)
        if self.structure == "dict":
            return {"logits": logits, "extra": extra}
        if self.structure == "dataclass":
            return Outputs(logits, tuple(extra))
        return Pair(logits, extra)
