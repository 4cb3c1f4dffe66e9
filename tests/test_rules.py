"""The coupling rules, table-driven: for one op family each, which channels the traced graph
ties together and where each group's channels sit in every member tensor.

Each case names a tiny model, the groups expected (sizes, members) and, for one group, the
indices a member keeps when that group keeps some channels — the offsets of a
concatenation, the blocks of a flatten, the heads inside a projection.
"""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import prunekit as pk
from prunekit.selection.group_plans import plan_from_keep


class Concat(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b, self.c = nn.Conv2d(3, 4, 1), nn.Conv2d(3, 6, 1), nn.Conv2d(10, 5, 1)

    def forward(self, x):
        return self.c(torch.cat([self.a(x), self.b(x)], 1))


class Halves(nn.Module):
    """chunk(2) needs equal halves, so both halves lose the same channels."""

    def __init__(self):
        super().__init__()
        self.a, self.b, self.c = nn.Conv2d(3, 8, 1), nn.Conv2d(4, 5, 1), nn.Conv2d(4, 5, 1)

    def forward(self, x):
        u, v = self.a(x).chunk(2, 1)
        return self.b(u) + self.c(v)


class FlattenLinear(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.fc = nn.Conv2d(3, 4, 1), nn.Linear(16, 5)

    def forward(self, x):  # (B, 4, 2, 2) -> (B, 16): channel c is features 4c .. 4c + 3
        return self.fc(self.a(x).flatten(1))


class GroupedQueryAttention(nn.Module):
    def __init__(self, heads=4, kv_heads=2, head_dim=8):
        super().__init__()
        self.num_heads, self.kv_heads, self.head_dim = heads, kv_heads, head_dim
        self.q, self.o = nn.Linear(16, heads * head_dim), nn.Linear(heads * head_dim, 16)
        self.k, self.v = nn.Linear(16, kv_heads * head_dim), nn.Linear(16, kv_heads * head_dim)

    def forward(self, x):
        B, T, _ = x.shape
        q = self.q(x).view(B, T, self.num_heads, self.head_dim).transpose(1, 2)  # (B, nh, T, hs)
        k = self.k(x).view(B, T, self.kv_heads, self.head_dim).transpose(1, 2)
        v = self.v(x).view(B, T, self.kv_heads, self.head_dim).transpose(1, 2)
        y = F.scaled_dot_product_attention(q, k, v, enable_gqa=True)
        return self.o(y.transpose(1, 2).reshape(B, T, -1))


def rows(*ranges):
    return [i for start, stop in ranges for i in range(start, stop)]


CASES = {
    # name: (model, inputs, groups as (size, members), (group index, kept, tensor, dim, kept there))
    "cat: offsets": (
        Concat, torch.randn(1, 3, 4, 4),
        [(4, ["a.bias[out]", "a.weight[out]", "c.weight[in]"]),
         (6, ["b.bias[out]", "b.weight[out]", "c.weight[in]"])],
        (1, [0, 5], "c.weight", 1, [0, 1, 2, 3, 4, 9])),
    "chunk: equal halves tied": (
        Halves, torch.randn(1, 3, 4, 4),
        [(4, ["a.bias[out]", "a.weight[out]", "b.weight[in]", "c.weight[in]"])],
        (0, [0, 1], "a.weight", 0, [0, 1, 4, 5])),
    "flatten: a channel is a block of features": (
        FlattenLinear, torch.randn(1, 3, 2, 2),
        [(4, ["a.bias[out]", "a.weight[out]", "fc.weight[in]"])],
        (0, [1], "fc.weight", 1, [4, 5, 6, 7])),
    "grouped convolution: channels within each group": (
        lambda: nn.Sequential(nn.Conv2d(3, 8, 1), nn.Conv2d(8, 8, 3, groups=2),
                              nn.Conv2d(8, 4, 1)), torch.randn(1, 3, 6, 6),
        [(4, ["0.bias[out]", "0.weight[out]", "1.weight[in]"]),
         (4, ["1.bias[out]", "1.weight[out]", "2.weight[in]"])],
        (0, [0, 1], "0.weight", 0, [0, 1, 4, 5])),
    "depthwise convolution: in and out are the same channels": (
        lambda: nn.Sequential(nn.Conv2d(3, 4, 1), nn.Conv2d(4, 4, 3, groups=4),
                              nn.Conv2d(4, 2, 1)), torch.randn(1, 3, 6, 6),
        [(4, ["0.bias[out]", "0.weight[out]", "1.bias[out]", "1.weight[out]", "2.weight[in]"])],
        (0, [3], "1.weight", 0, [3])),
}


@pytest.mark.parametrize("name", list(CASES))
def test_coupling(name):
    build, x, expected, (index, kept, tensor, dim, kept_there) = CASES[name]
    graph = pk.DependencyGraph(build().eval(), x)
    assert [(g.size, [str(m) for m in g.members]) for g in graph.groups] == expected
    group = graph.groups[index]
    plan = plan_from_keep(graph, {group.axis: torch.tensor(kept)}, {})
    assert plan.tensors[tensor][dim] == kept_there


def test_grouped_query_attention_ties_each_kv_head_to_its_query_heads():
    graph = pk.DependencyGraph(GroupedQueryAttention().eval(), torch.randn(1, 5, 16))
    (heads,) = graph.head_groups()
    assert heads.size == 2  # key/value heads
    plan = plan_from_keep(graph, {heads.axis: torch.tensor([0])}, {})
    assert plan.tensors["k.weight"][0] == rows((0, 8))
    assert plan.tensors["q.weight"][0] == rows((0, 16))  # query heads 0 and 1 read kv head 0
    assert plan.tensors["o.weight"][1] == rows((0, 16))
    assert plan.attributes[""]["num_heads"] == 2 and plan.attributes[""]["kv_heads"] == 1


def test_multihead_attention_heads_are_thirds_of_the_packed_projection():
    model = nn.MultiheadAttention(16, 4, batch_first=True).eval()
    x = torch.randn(1, 5, 16)
    graph = pk.DependencyGraph(model, (x, x, x))
    (heads,) = graph.head_groups()
    assert heads.size == 4
    plan = plan_from_keep(graph, {heads.axis: torch.tensor([0, 1, 2])}, {})
    assert plan.tensors["in_proj_weight"][0] == rows((0, 12), (16, 28), (32, 44))
    assert plan.tensors["out_proj.weight"][1] == rows((0, 12))


def test_an_op_without_a_rule_fixes_its_dims_and_is_listed():
    class Odd(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Conv2d(3, 4, 1), nn.Conv2d(4, 2, 1)

        def forward(self, x):
            return self.b(torch.fft.fft2(self.a(x)).real)

    graph = pk.DependencyGraph(Odd().eval(), torch.randn(1, 3, 4, 4))
    assert graph.groups == [] and any("fft2" in u.op for u in graph.unknown_ops)
    with pytest.raises(pk.UnsupportedOpError, match="fft2"):
        pk.DependencyGraph(Odd().eval(), torch.randn(1, 3, 4, 4), strict=True)


def test_a_norm_without_tensors_keeps_its_channel_count_true():
    model = nn.Sequential(nn.Conv2d(3, 8, 1), nn.InstanceNorm2d(8), nn.Conv2d(8, 2, 1)).eval()
    x = torch.randn(1, 3, 4, 4)
    result = pk.prune(model, x, pk.FilterPruning(0.5))
    assert model[1].num_features == 4 and result.report.ok


def test_baddbmm_by_keyword_is_traced_like_positional():
    """Bloom calls ``alibi.baddbmm(batch1=..., batch2=..., beta=..., alpha=...)``."""

    class Scores(nn.Module):
        def __init__(self):
            super().__init__()
            self.q, self.k, self.out = nn.Linear(8, 16), nn.Linear(8, 16), nn.Linear(5, 3)

        def forward(self, x):
            bias = torch.zeros(x.shape[0], 5, 5)
            scores = bias.baddbmm(batch1=self.q(x), batch2=self.k(x).transpose(1, 2), beta=1.0,
                                  alpha=0.5)
            return self.out(scores)

    model, x = Scores().eval(), torch.randn(2, 5, 8)
    result = pk.prune(model, x, pk.FilterPruning(0.5))
    assert not result.unknown_ops and model.q.out_features == 8 and model.k.out_features == 8


def test_a_rule_that_fails_is_treated_as_no_rule_and_named():
    from prunekit.graph.rules.base import RULES

    def broken(ctx, args, kwargs, out):
        raise KeyError("a bug in the rule")

    saved = dict(RULES)
    pk.register_rule("relu", broken)
    try:
        model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2)).eval()
        result = pk.prune(model, torch.randn(2, 4), pk.FilterPruning(0.5))
        assert any("its rule failed: KeyError" in op.op for op in result.unknown_ops)
        assert model[0].out_features == 8  # its dims were left alone
        with pytest.raises(pk.UnsupportedOpError, match="coupling rule for .* failed"):
            pk.DependencyGraph(model, torch.randn(2, 4), strict=True)
    finally:
        RULES.clear()
        RULES.update(saved)


class HeadSizeFromKey(nn.Module):
    """diffusers' attention: the head size is read off the key and used for all three views,
    with torch's default scale."""

    def __init__(self, width=32, heads=4):
        super().__init__()
        self.heads = heads
        self.to_q, self.to_k, self.to_v = (nn.Linear(width, width) for _ in range(3))
        self.to_out = nn.Linear(width, width)

    def forward(self, x):
        q, k, v = self.to_q(x), self.to_k(x), self.to_v(x)
        batch, head_dim = x.shape[0], k.shape[-1] // self.heads
        q, k, v = (t.view(batch, -1, self.heads, head_dim).transpose(1, 2) for t in (q, k, v))
        out = F.scaled_dot_product_attention(q, k, v)
        return self.to_out(out.transpose(1, 2).reshape(batch, -1, self.heads * head_dim))


def test_a_value_head_size_read_off_the_key_keeps_its_size():
    torch.manual_seed(0)
    model = nn.Sequential(HeadSizeFromKey(), nn.Linear(32, 4)).eval()
    x = torch.randn(2, 5, 32)
    graph = pk.DependencyGraph(model, x)
    for group in graph.groups:  # the value's rows go only with whole heads, never alone
        names = {m.name for m in group.members if m.dim == 0}
        assert "0.to_v.weight" not in names or "0.to_q.weight" in names, group
    result = pk.prune(model, x, pk.FilterPruning(0.5))
    assert result.skipped == [] and result.report.ok


class FunctionalAttentionPool(nn.Module):
    """CLIP's ResNet attention pooling: F.multi_head_attention_forward called by a module of
    its own, with separate projections."""

    def __init__(self, width=16, heads=4):
        super().__init__()
        self.num_heads = heads
        self.q_proj, self.k_proj, self.v_proj = (nn.Linear(width, width) for _ in range(3))
        self.c_proj = nn.Linear(width, 8)

    def forward(self, x):  # x: (tokens, batch, width)
        out, _ = F.multi_head_attention_forward(
            x[:1], x, x, x.shape[-1], self.num_heads, None,
            torch.cat([self.q_proj.bias, self.k_proj.bias, self.v_proj.bias]), None, None,
            False, 0.0, self.c_proj.weight, self.c_proj.bias, training=False,
            need_weights=False, use_separate_proj_weight=True, q_proj_weight=self.q_proj.weight,
            k_proj_weight=self.k_proj.weight, v_proj_weight=self.v_proj.weight)
        return out


def test_functional_attention_in_a_module_of_its_own_narrows_only_by_whole_heads():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 16), FunctionalAttentionPool()).eval()
    x = torch.randn(5, 2, 6)
    result = pk.prune(model, x, pk.HeadPruning(0.5))
    assert result.skipped == [] and result.report.ok
    assert model[0].out_features % 4 == 0 and model[0].out_features < 16  # whole heads of 4
    assert model[1].num_heads == model[0].out_features // 4


class DeformableSampling(nn.Module):
    """Deformable attention's core: per-head offsets from a Linear, flattened into the batch
    of grid_sample beside the per-head values."""

    def __init__(self, width=16, heads=4, points=3):
        super().__init__()
        self.n_heads, self.points = heads, points
        self.value_proj = nn.Linear(width, width)
        self.offsets = nn.Linear(width, heads * points * 2)
        self.out = nn.Linear(width, 5)

    def forward(self, x):  # x: (batch, 4 * 4 tokens, width)
        batch = x.shape[0]
        value = self.value_proj(x).view(batch, 4, 4, self.n_heads, -1).permute(0, 3, 4, 1, 2)
        grid = self.offsets(x[:, :2]).view(batch, 2, self.n_heads, self.points, 2).tanh()
        sampled = F.grid_sample(value.flatten(0, 1), grid.transpose(1, 2).flatten(0, 1),
                                align_corners=False)  # (batch * heads, head_dim, 2, points)
        merged = sampled.view(batch, -1, 2, self.points).sum(-1).transpose(1, 2)
        return self.out(merged)


def test_grid_sample_ties_the_grid_batch_to_the_sampled_batch():
    torch.manual_seed(0)
    model = DeformableSampling().eval()
    x = torch.randn(2, 16, 16)
    graph = pk.DependencyGraph(model, x)
    for group in graph.all_groups:  # the offsets' heads only go with the values' heads
        names = {m.name for m in group.members}
        # (the points, summed over, may go alone: a zero-preserving sum leaves the check to
        # decide, and sampling at a zeroed offset reads a value, so the check refuses them)
        alone = names == {"offsets.weight", "offsets.bias"} and group.size == model.points
        assert "offsets.weight" not in names or "value_proj.weight" in names or alone, names
    result = pk.prune(model, x, pk.FilterPruning(0.5))
    assert result.report.ok
    assert [s.group for s in result.skipped if "offsets" not in s.group] == []
    assert model.offsets.out_features == model.n_heads * 3 * 2 and model.value_proj.out_features < 16


class RotatesAll(nn.Module):
    """Rotary code that splits off a pass-through part, here empty (``x[..., 16:]`` of 16)."""

    def __init__(self):
        super().__init__()
        self.up, self.down = nn.Linear(8, 4 * 16), nn.Linear(4 * 16, 8)

    def forward(self, x):
        heads = self.up(x).view(*x.shape[:-1], -1, 16)
        rotated, passed = heads[..., :16], heads[..., 16:]
        return self.down(torch.cat([rotated.flip(-1), passed], dim=-1).flatten(-2))


def test_an_empty_slice_has_no_channels_and_breaks_nothing(tmp_path):
    """It used to crash the slicing rule, which then counted as no rule and fixed every dim."""
    x = torch.randn(2, 5, 8)
    graph = pk.DependencyGraph(RotatesAll(), x, strict=True)
    assert any("up.weight" in str(group) for group in graph.groups)
    result = pk.prune(RotatesAll(), x, pk.FilterPruning(0.5, "l1"))
    assert result.after.params < result.before.params


class Experts(nn.Module):
    """Two experts' MLPs as one grouped matmul each (the tokens sorted by expert), as
    transformers' mixture-of-experts layers run them."""

    def __init__(self, width=8, inner=16, experts=2):
        super().__init__()
        self.up = nn.Parameter(torch.randn(experts, width, inner) / width ** 0.5)
        self.down = nn.Parameter(torch.randn(experts, inner, width) / inner ** 0.5)

    def forward(self, x):
        offsets = torch.tensor([x.shape[0] // 2, x.shape[0]], dtype=torch.int32)
        hidden = torch.relu(F.grouped_mm(x, self.up, offs=offsets))
        return F.grouped_mm(hidden, self.down, offs=offsets)


@pytest.mark.skipif(not hasattr(F, "grouped_mm"), reason="torch without grouped_mm")
def test_grouped_matmul_prunes_each_inner_channel_in_every_expert(tmp_path):
    from .helpers import check_pruned

    torch.manual_seed(0)
    result = check_pruned(Experts(), torch.randn(6, 8), pk.FilterPruning(0.5, "l1"), tmp_path)
    assert {name: list(dims) for name, dims in result.plan.tensors.items()} == {
        "up": [2], "down": [1]}
    assert len(result.plan.tensors["up"][2]) == 8
