"""How the dependency graph couples channels, checked on cases with a known answer."""

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import prunekit as pk

from .zoo import ControlFlow, depthwise_se, resnet_basic, resnext_block, seed_example


def group_of(graph: pk.DependencyGraph, member: str) -> pk.Group:
    found = [g for g in graph.groups if any(str(m) == member for m in g.members)]
    assert len(found) == 1, f"{member} is in {len(found)} groups"
    return found[0]


def names(group: pk.Group) -> set[str]:
    return {str(m) for m in group.members}


def test_residual_add_ties_stem_and_block_outputs():
    model = resnet_basic().eval()
    graph = pk.DependencyGraph(model, torch.randn(1, 3, 16, 16))
    group = group_of(graph, "0.0.0.weight[out]")
    assert "0.1.conv2.weight[out]" in names(group)  # identity shortcut
    assert "0.1.conv1.weight[in]" in names(group)
    assert "0.2.conv1.weight[in]" in names(group)
    assert "0.2.downsample.0.weight[in]" in names(group)
    assert "0.2.conv2.weight[out]" not in names(group)  # behind a downsample conv
    assert str(group).startswith(f"group {group.id}: 16 channels: 0.0.0.weight[out] =>")


class TwoBranchCat(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Conv2d(3, 4, 1), nn.Conv2d(3, 6, 1)
        self.c = nn.Conv2d(10, 5, 1)

    def forward(self, x):
        return self.c(torch.cat([self.a(x), self.b(x)], dim=1))


def test_concat_maps_indices_with_offsets():
    model = TwoBranchCat().eval()
    result = pk.prune(model, torch.randn(1, 3, 4, 4), pk.FilterPruning(0.5, "l1"))
    tensors = result.plan.tensors
    kept_a, kept_b = tensors["a.weight"][0], tensors["b.weight"][0]
    assert len(kept_a) == 2 and len(kept_b) == 3
    assert tensors["c.weight"][1] == kept_a + [4 + i for i in kept_b]
    assert model.c.in_channels == 5 and 0 not in tensors.get("c.weight", {})


def test_flatten_maps_a_channel_to_a_block_of_features():
    model = nn.Sequential(nn.Conv2d(1, 4, 1), nn.Flatten(), nn.Linear(4 * 9, 2)).eval()
    result = pk.prune(model, torch.randn(1, 1, 3, 3), pk.FilterPruning(0.5, "l2"))
    kept = result.plan.tensors["0.weight"][0]
    assert result.plan.tensors["2.weight"][1] == [c * 9 + i for c in kept for i in range(9)]


def test_output_layer_keeps_its_size_without_being_told():
    model = seed_example().eval()
    result = pk.prune(model, torch.randn(1, 3, 12, 12), pk.FilterPruning(0.5))
    assert model[4].out_channels == 256
    assert (model[0].out_channels, model[2].out_channels) == (32, 64)
    assert 0 not in result.plan.tensors["4.weight"]


def test_ignored_module_keeps_its_channels():
    model = seed_example().eval()
    pk.prune(model, torch.randn(1, 3, 12, 12), pk.FilterPruning(0.5), ignore=[model[2]])
    assert model[2].out_channels == 128 and model[0].out_channels == 64
    assert model[2].in_channels == 64


def test_grouped_and_depthwise_convs_keep_groups_consistent():
    model = resnext_block().eval()
    pk.prune(model, torch.randn(1, 3, 8, 8), pk.FilterPruning(0.5))
    grouped = [m for m in model.modules() if isinstance(m, nn.Conv2d) and m.groups > 1]
    assert [m.groups for m in grouped] == [4, 8]  # channels pruned within each group
    for conv in grouped:
        assert conv.in_channels % conv.groups == 0 and conv.weight.shape[1] * conv.groups == conv.in_channels

    model = depthwise_se().eval()
    pk.prune(model, torch.randn(1, 3, 8, 8), pk.FilterPruning(0.5))
    depthwise = [m for m in model.modules() if isinstance(m, nn.Conv2d) and m.groups > 1]
    assert all(m.groups == m.in_channels == m.out_channels for m in depthwise)
    assert [m.groups for m in depthwise] == [8, 32]


class PixelShuffleNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 1)
        self.other = nn.Conv2d(3, 6, 1)
        self.head = nn.Conv2d(2, 2, 1)

    def forward(self, x):
        y = F.pixel_shuffle(self.conv(x), 2)  # no coupling rule for this op
        return self.head(y), self.other(x).sum()


def test_unknown_op_marks_its_dims_unprunable():
    graph = pk.DependencyGraph(PixelShuffleNet().eval(), torch.randn(1, 3, 4, 4))
    assert [(u.op, u.module) for u in graph.unknown_ops] == [("torch.pixel_shuffle", "<model>")]
    assert not any("conv.weight[out]" in names(g) for g in graph.groups)


def test_unknown_op_raises_when_strict():
    with pytest.raises(pk.UnsupportedOpError, match="pixel_shuffle.*'<model>'"):
        pk.DependencyGraph(PixelShuffleNet().eval(), torch.randn(1, 3, 4, 4), strict=True)


def test_tracing_under_no_grad_with_frozen_parameters_finds_the_same_groups():
    model = resnet_basic().eval()
    reference = [str(g) for g in pk.DependencyGraph(model, torch.randn(1, 3, 16, 16)).groups]
    frozen = copy.deepcopy(model).requires_grad_(False)
    with torch.no_grad():
        groups = [str(g) for g in pk.DependencyGraph(frozen, torch.randn(1, 3, 16, 16)).groups]
    assert groups == reference


def test_tracing_restores_training_mode():
    model = resnet_basic().train()
    pk.DependencyGraph(model, torch.randn(2, 3, 16, 16))
    assert all(m.training for m in model.modules())


def test_control_flow_follows_the_branch_taken():
    model = ControlFlow().eval()
    graph = pk.DependencyGraph(model, torch.randn(1, 3, 8, 8))
    traced = {name for slot in graph.trace.slots for name in slot.names}
    assert {"blocks.0.weight", "blocks.1.weight", "stem.weight"} <= traced
    assert "blocks.2.weight" not in traced  # never runs with repeats=2
    # the data-dependent branch reads the mean over all channels of the residual stream,
    # so those channels are fixed; the branch's own output channels are still prunable
    assert names(group_of(graph, "other.weight[out]")) >= {"other.bias[out]", "head.weight[in]"}
    assert not any("stem.weight[out]" in names(g) for g in graph.groups)
