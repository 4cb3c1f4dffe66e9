"""Each criterion on a hand-made model where the right channels to remove are known."""

import copy

import pytest
import torch
from torch import nn

import prunekit as pk


class Tiny(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(8)
        self.relu = nn.ReLU()
        self.conv2 = nn.Conv2d(8, 6, 3, padding=1)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(6, 3)

    def forward(self, x):
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.relu(self.conv2(x))
        return self.fc(self.pool(x).flatten(1))


def tiny() -> Tiny:
    torch.manual_seed(0)
    return Tiny().eval()


def batches(n=3):
    generator = torch.Generator().manual_seed(1)
    return [(torch.rand(16, 3, 8, 8, generator=generator),
             torch.randint(0, 3, (16,), generator=generator)) for _ in range(n)]


def removed_filters(model, criterion, **kwargs) -> set[int]:
    x = torch.rand(2, 3, 8, 8)
    result = pk.prune(model, x, pk.FilterPruning(0.5, criterion), **kwargs)
    kept = result.plan.tensors["conv1.weight"][0]
    return set(range(8)) - set(kept)


def make_dead(model: Tiny, channels) -> None:
    """Channels whose activation is always zero although their weights are the largest."""
    with torch.no_grad():
        model.conv1.weight[channels] = -1.0  # inputs are positive: always negative
        model.conv1.bias[channels] = -1.0


@pytest.mark.parametrize("criterion", ["apoz", "mean_activation"])
def test_activation_criteria_remove_dead_channels(criterion):
    model = tiny()
    make_dead(model, [1, 3, 4, 6])
    assert removed_filters(copy.deepcopy(model), "l1") != {1, 3, 4, 6}  # weights alone miss them
    assert removed_filters(model, criterion, data=batches()) == {1, 3, 4, 6}


def test_taylor_removes_channels_the_loss_does_not_depend_on():
    model = tiny()
    with torch.no_grad():
        model.conv1.weight[[0, 2, 5, 7]] *= 10  # large weights and activations…
        model.conv2.weight[:, [0, 2, 5, 7]] = 0  # …that nothing downstream reads
    assert removed_filters(copy.deepcopy(model), "mean_activation", data=batches()) != {0, 2, 5, 7}
    assert removed_filters(model, "taylor", data=batches()) == {0, 2, 5, 7}


def test_taylor_accepts_a_custom_loss_without_labels():
    model = tiny()
    with torch.no_grad():
        model.conv2.weight[:, [1, 2, 3, 4]] = 0
    inputs_only = [x for x, _ in batches()]
    removed = removed_filters(model, "taylor", data=inputs_only,
                              loss_fn=lambda out, batch: out.pow(2).sum())
    assert removed == {1, 2, 3, 4}


def test_taylor_without_labels_or_loss_is_a_clear_error():
    model = tiny()
    before = copy.deepcopy(model.state_dict())
    with pytest.raises(pk.ConfigError, match="taylor"):
        removed_filters(model, "taylor", data=[x for x, _ in batches()])
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_fpgm_removes_filters_at_the_geometric_median():
    model = tiny()
    with torch.no_grad():
        weight = model.conv1.weight  # 8 filters: 4 spread out, 4 near their centre
        centre = torch.randn(weight[0].shape) * 3
        weight[[0, 1, 4, 6]] = centre + torch.randn(4, *weight.shape[1:]) * 2
        weight[[2, 3, 5, 7]] = centre + torch.randn(4, *weight.shape[1:]) * 0.05
    assert removed_filters(model, "fpgm") == {2, 3, 5, 7}


def test_bn_scale_removes_channels_with_small_norm_scales():
    model = tiny()
    with torch.no_grad():
        model.bn1.weight[[0, 1, 2, 7]] = 1e-3
        model.conv1.weight[[0, 1, 2, 7]] *= 10
    assert removed_filters(model, "bn_scale") == {0, 1, 2, 7}


def test_data_criterion_without_data_is_a_clear_error():
    with pytest.raises(pk.ConfigError, match="apoz.*data="):
        removed_filters(tiny(), "apoz")


def test_scoring_hooks_are_removed_even_when_a_batch_fails():
    model = tiny()
    bad = batches(1) + [(torch.rand(2, 5, 8, 8), torch.zeros(2, dtype=torch.long))]
    before = copy.deepcopy(model.state_dict())
    with pytest.raises(RuntimeError):
        removed_filters(model, "apoz", data=bad)
    for module in model.modules():
        assert not module._forward_hooks and not module._forward_pre_hooks
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    removed_filters(model, "apoz", data=batches())
    for module in model.modules():
        assert not module._forward_hooks and not module._forward_pre_hooks


@pytest.mark.parametrize("criterion", ["apoz", "mean_activation", "taylor", "fpgm", "bn_scale"])
def test_every_criterion_gives_a_verified_model(criterion, tmp_path):
    from .helpers import check_pruned

    check_pruned(tiny(), torch.rand(2, 3, 8, 8), pk.FilterPruning(0.5, criterion), tmp_path,
                 data=batches())
