"""Every path asks the method: sensitivity, preview (analyze), iterative steps and the checks
follow what the method prunes, and layer pruning honours every argument of pk.prune."""

import copy

import pytest
import torch
import torchvision
from torch import nn

import prunekit as pk
from prunekit.candidates.layers import removal
from prunekit.checks import BlocksBypassed


def tiny_vit():
    torch.manual_seed(0)
    return torchvision.models.VisionTransformer(image_size=32, patch_size=16, num_layers=2,
                                                num_heads=2, hidden_dim=16, mlp_dim=32,
                                                num_classes=4).eval()


X = torch.randn(1, 3, 32, 32)


@pytest.mark.parametrize("method, kind", [(pk.FilterPruning(), "mlp"),
                                          (pk.HeadPruning(0.5), "heads")])
def test_sensitivity_and_preview_try_exactly_the_methods_candidates(method, kind):
    model = tiny_vit()
    rows = method.preview(model, X).rows
    table = pk.sensitivity(model, X, ratios=(0.5,), method=method,
                           evaluate=lambda m: float(m(X).detach().abs().sum()))
    assert len(table.rows) == len(rows) == 2  # one per encoder layer
    sizes = {row.size for row in rows}
    assert sizes == ({32} if kind == "mlp" else {2})  # MLP neurons, or the 2 heads
    assert all(row.removed == row.size // 2 for row in rows)


def test_filter_pruning_leaves_heads_to_head_pruning():
    model = tiny_vit()
    pk.prune(model, X, pk.FilterPruning(0.5))
    attention = model.encoder.layers[0].self_attention
    assert attention.num_heads == 2 and attention.in_proj_weight.shape == (48, 16)
    assert model.encoder.layers[0].mlp[0].out_features == 16


def blocks():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(),
                         *[nn.Sequential(nn.Conv2d(8, 8, 3, padding=1), nn.ReLU())
                           for _ in range(3)],
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 2)).eval()


def test_layer_pruning_honours_ignore_strict_and_check():
    x = torch.randn(2, 3, 8, 8)
    model = blocks()
    result = pk.prune(model, x, pk.LayerPruning(1, "last"))
    assert result.plan.layers == ["4.0"] and "blocks bypassed: 4.0 removed" in str(result.report)
    model = blocks()
    result = pk.prune(model, x, pk.LayerPruning(1, "last"), ignore=[model[4]])
    assert result.plan.layers == ["3.0"]
    unchecked = pk.prune(blocks(), x, pk.LayerPruning(1, "last"), check=False)
    assert "outputs not compared" in str(unchecked.report)
    with pytest.raises(pk.ConfigError, match="strict= does not apply"):
        pk.prune(blocks(), x, pk.LayerPruning(1, "last"), strict=True)


def test_the_blocks_bypassed_check_can_fail():
    model, x = blocks(), torch.randn(2, 3, 8, 8)
    plan = removal(["3"], None)
    assert BlocksBypassed().run(model, x, plan).ok
    plan.tensors["0.weight"] = {0: list(range(8))}  # also "touches" a weight: same values
    plan.shapes["0.weight"] = [8, 3, 3, 3]
    assert BlocksBypassed().run(model, x, plan).ok
    plan.tensors["0.weight"] = {0: [1, 0, *range(2, 8)]}  # reorders one: a change
    report = BlocksBypassed().run(model, x, plan)
    assert not report.ok and "0.weight changed" in str(report)
    wider = BlocksBypassed().run(model, x, removal(["7"], None))  # the classifier: 8 outputs
    assert not wider.ok and "output shapes [(2, 2)] -> [(2, 8)]" in str(wider)


def test_layer_pruning_in_steps():
    model, x = blocks(), torch.randn(2, 3, 8, 8)
    history = pk.iterative_prune(model, x, pk.LayerPruning(2, "last"), steps=2)
    assert [isinstance(model[i][0], nn.Identity) for i in (2, 3, 4)] == [False, True, True]
    assert history.plan.layers == ["4.0", "3.0"]


def test_a_generator_of_batches_serves_scoring_and_reconstruction():
    model, x = blocks(), torch.randn(4, 3, 8, 8)
    original = copy.deepcopy(model)
    batches = (torch.randn(4, 3, 8, 8) for _ in range(3))
    result = pk.prune(model, x, pk.ChannelPruning(0.5, "apoz", reconstruct=True), data=batches)
    assert result.report.ok and not result.plan.is_empty
    assert pk.verify(original, x, result.plan).ok


class LayerScale(nn.Module):
    def __init__(self, channels):
        super().__init__()
        self.gamma = nn.Parameter(torch.ones(1, channels, 1, 1))  # a member with no role

    def forward(self, x):
        return x * self.gamma


def test_a_criterion_without_a_role_wish_sees_every_parameter_member():
    model = nn.Sequential(nn.Conv2d(3, 8, 1), nn.BatchNorm2d(8), LayerScale(8),
                          nn.Conv2d(8, 2, 1)).eval()
    (group,) = pk.DependencyGraph(model, torch.randn(1, 3, 4, 4)).groups
    every = [str(m) for m in group.members if m.slot.kind == "parameter"]
    assert "2.gamma[dim1]" in every and len(every) == 6
    assert [str(m) for m in pk.GroupPruning().scored_members(group, None)] == every
    assert [str(m) for m in pk.GroupPruning().scored_members(group, "norm")] == [
        "1.bias[norm]", "1.weight[norm]"]
    assert [str(m) for m in pk.FilterPruning().scored_members(group, None)] == [
        "0.bias[out]", "0.weight[out]"]


def test_the_preview_lists_ops_without_a_rule():
    class Odd(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Conv2d(3, 4, 1), nn.Conv2d(4, 2, 1)

        def forward(self, x):
            return self.b(torch.fft.fft2(self.a(x)).real)

    preview = pk.FilterPruning().preview(Odd().eval(), torch.randn(1, 3, 4, 4))
    assert preview.rows == [] and any("fft2" in op.op for op in preview.unknown_ops)
