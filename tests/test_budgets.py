"""FLOPs and parameter budgets, and global ranking with a per-group cap."""

import copy

import pytest
import torch
import torchvision

import prunekit as pk

from .helpers import outputs


def resnet():
    torch.manual_seed(0)
    return torchvision.models.resnet18(num_classes=10).eval()


X = torch.randn(1, 3, 32, 32)


@pytest.mark.parametrize("global_ranking", [False, True])
@pytest.mark.parametrize("target", [0.3, 0.5, 0.7])
def test_flops_target_is_met_within_two_points(target, global_ranking):
    method = pk.FilterPruning(criterion="l2", flops_target=target, global_ranking=global_ranking)
    result = pk.prune(resnet(), X, method)
    assert abs(result.flop_reduction - target) <= 0.02
    assert pk.verify(resnet(), X, result.plan).ok


def test_params_target_is_met_within_two_points():
    result = pk.prune(resnet(), X, pk.ChannelPruning(params_target=0.4))
    assert abs(result.param_reduction - 0.4) <= 0.02


def test_global_ranking_prunes_groups_unevenly_within_the_cap():
    model = resnet()
    with torch.no_grad():  # one layer where most filters are tiny next to a few
        model.layer1[0].conv1.weight[8:].mul_(1e-3)
    result = pk.prune(model, X, pk.FilterPruning(0.3, "l1", global_ranking=True, max_ratio=0.75))
    fractions = [1 - g["kept"] / g["size"] for g in result.plan.groups]
    assert max(fractions) <= 0.75 + 1e-9
    assert max(fractions) - min(fractions) > 0.2
    total = sum(g.size for g in pk.DependencyGraph(resnet(), X).groups)
    removed = sum(g["size"] - g["kept"] for g in result.plan.groups) / total
    assert abs(removed - 0.3) < 0.02
    kept = result.plan.tensors["layer1.0.conv1.weight"][0]
    assert len(kept) == 64 - int(0.75 * 64)  # the weak layer loses the most allowed


def test_an_unreachable_budget_is_a_clear_error_and_changes_nothing():
    model = resnet()
    before = copy.deepcopy(model)
    with pytest.raises(pk.PruneError, match="cannot remove 99.0% of FLOPs"):
        pk.prune(model, X, pk.FilterPruning(flops_target=0.99, max_ratio=0.5))
    for a, b in zip(outputs(model, X), outputs(before, X)):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_budget_settings_are_checked():
    with pytest.raises(pk.ConfigError, match="not flops_target and params_target"):
        pk.FilterPruning(flops_target=0.5, params_target=0.5)
    with pytest.raises(pk.ConfigError, match="flops_target"):
        pk.FilterPruning(flops_target=1.5)
