"""Promise: "one call works on any network, with no hand-written settings, and a piece it
cannot prune is named, never dropped silently".

Attacks from a peer's own test scenarios: outputs normalised or summed over channels,
overrides beside global ranking, iterative pruning's last step, heads after filters on
``nn.MultiheadAttention``."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import prunekit as pk
from prunekit.workflows.iterative import iterative_prune

X = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(0))


class Reduced(nn.Module):
    def __init__(self, how):
        super().__init__()
        torch.manual_seed(0)
        self.how = how
        self.conv = nn.Conv2d(3, 8, 3)
        self.bn = nn.BatchNorm2d(8)
        self.head = nn.Conv2d(8, 4, 1)

    def forward(self, x):
        y = torch.relu(self.bn(self.conv(x)))
        if self.how == "normalize":
            return self.head(F.normalize(y, dim=1))
        if self.how == "sum":
            return self.head(y) + y.sum(1, keepdim=True)
        if self.how == "norm":
            return self.head(y) * y.norm(dim=1, keepdim=True)
        return self.head(y) + y.mean(1, keepdim=True)


@pytest.mark.parametrize("how", ["normalize", "sum", "norm"])
def test_a_channel_dim_normalised_or_summed_over_is_pruned_exactly(how):
    model = Reduced(how).eval()
    result = pk.prune(model, X, pk.FilterPruning(0.5))
    assert model.conv.out_channels == 4 and result.report.ok and not result.skipped


def test_a_mean_over_channels_still_fixes_them():
    model = Reduced("mean").eval()  # a mean divides by the count: fewer channels, other values
    result = pk.prune(model, X, pk.FilterPruning(0.5))
    assert model.conv.out_channels == 8 and result.plan.is_empty


def test_overrides_hold_under_global_ranking():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 16, 3), nn.ReLU(), nn.Conv2d(16, 16, 3), nn.ReLU(),
                        nn.Conv2d(16, 4, 1))
    pk.prune(net, torch.randn(2, 3, 12, 12),
             pk.FilterPruning(0.5, global_ranking=True, overrides={"0": 0.0}))
    assert net[0].out_channels == 16 and net[2].out_channels == 8


@pytest.mark.parametrize("steps", [2, 3, 5])
def test_iterative_pruning_ends_where_one_shot_does(steps):
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 10, 3), nn.ReLU(), nn.Conv2d(10, 4, 1))
    x = torch.randn(2, 3, 8, 8)
    once = copy.deepcopy(net)
    pk.prune(once, x, pk.FilterPruning(0.5))
    history = iterative_prune(net, x, pk.FilterPruning(0.5), steps=steps,
                              finetune=lambda model, step: None)
    assert net[0].out_channels == once[0].out_channels == 5
    assert [r.params for r in history.records] == sorted(
        [r.params for r in history.records], reverse=True)


class Attention(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.inp = nn.Linear(8, 32)
        self.att = nn.MultiheadAttention(32, 4, batch_first=True)
        self.out = nn.Linear(32, 3)

    def forward(self, x):
        h = self.inp(x)
        a, _ = self.att(h, h, h)
        return self.out(a + h)


def test_heads_are_found_after_filters_on_multihead_attention():
    model, x = Attention().eval(), torch.randn(2, 5, 8)
    pk.prune(model, x, pk.FilterPruning(0.5))
    result = pk.prune(model, x, pk.HeadPruning(0.5))
    assert model.att.num_heads == 2 and result.report.ok


class SplitByCounts(nn.Module):
    """A split into unequal pieces sized by the module's own counts (or by literals)."""

    def __init__(self, literal=False):
        super().__init__()
        torch.manual_seed(0)
        self.literal = literal
        if not literal:  # (counts equal to literal sizes would be taken for them)
            self.c1, self.c2 = 6, 10
        self.conv = nn.Conv2d(3, 16, 3)
        self.a, self.b = nn.Conv2d(6, 4, 1), nn.Conv2d(10, 4, 1)

    def forward(self, x):
        sizes = [6, 10] if self.literal else [self.c1, self.c2]
        p, q = torch.split(self.conv(x), sizes, dim=1)
        return self.a(p) + self.b(q)


@pytest.mark.parametrize("overrides, c1, c2", [({}, 3, 5), ({"a": 0.0}, 6, 5)])
def test_a_split_sized_by_the_modules_counts_prunes_each_piece(tmp_path, overrides, c1, c2):
    model, original = SplitByCounts().eval(), SplitByCounts().eval()
    result = pk.prune(model, X, pk.FilterPruning(0.5, overrides=overrides))
    assert (model.c1, model.c2, model.conv.out_channels) == (c1, c2, c1 + c2)
    assert result.report.ok and pk.verify(original, X, result.plan).ok
    pk.save(model, tmp_path / "saved", result.plan)
    reloaded = pk.load(SplitByCounts().eval(), tmp_path / "saved")
    assert (reloaded.c1, reloaded.c2) == (c1, c2)
    assert torch.equal(reloaded(X), model(X))


def test_a_split_with_literal_sizes_keeps_its_dim():
    model = SplitByCounts(literal=True).eval()
    result = pk.prune(model, X, pk.FilterPruning(0.5))
    assert model.conv.out_channels == 16 and result.plan.is_empty
