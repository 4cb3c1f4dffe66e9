"""Every argument mistake is one clear error naming the argument, and leaves the model as it
was; overrides take module-name prefixes; an optimizer can follow the pruned parameters."""

from __future__ import annotations

import copy

import pytest
import torch
import torchvision

import prunekit as pk

from .test_errors import assert_unchanged, state
from .zoo import resnet_basic

X = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(0))


@pytest.fixture(scope="module")
def resnet():
    return torchvision.models.resnet18(num_classes=10).eval()


def test_an_override_names_a_container_and_covers_everything_inside(resnet):
    import copy
    model = copy.deepcopy(resnet)
    pk.prune(model, torch.randn(1, 3, 32, 32), pk.FilterPruning(0.5, overrides={"layer4": 0.125}))
    assert model.layer4[0].conv1.out_channels == 448  # 1/8 of 512 removed, not half
    assert model.layer3[0].conv1.out_channels == 128


def test_a_misspelt_override_lists_close_matches(resnet):
    snapshot, text = state(resnet), repr(resnet)
    with pytest.raises(pk.ConfigError, match="no module 'layer44'.*did you mean 'layer4'"):
        pk.prune(resnet, torch.randn(1, 3, 32, 32), pk.FilterPruning(0.5, overrides={"layer44": 0.2}))
    assert_unchanged(resnet, snapshot, text)


@pytest.mark.parametrize("make, message", [
    (lambda: pk.FilterPruning(0.5, overrides="layer4"), "overrides must be a dict"),
    (lambda: pk.FilterPruning(0.5, criterion=["l1"]), "unknown criterion"),
])
def test_bad_method_settings_name_the_setting(make, message):
    with pytest.raises(pk.ConfigError, match=message):
        make()


@pytest.mark.parametrize("kwargs, message", [
    ({"tolerance": -1}, "tolerance must be a number >= 0"),
    ({"tolerance": float("nan")}, "tolerance must be a number >= 0"),
    ({"data": torch.randn(2, 3, 16, 16)}, "data must be an iterable of batches"),
    ({"data": [torch.randn(2, 7)]}, "data: the model does not run on the first batch"),
    ({"optimizer": "sgd"}, "optimizer must be a torch.optim.Optimizer"),
])
def test_bad_prune_arguments_name_the_argument(kwargs, message):
    model = resnet_basic().eval()
    snapshot, text = state(model), repr(model)
    with pytest.raises(pk.ConfigError, match=message):
        pk.prune(model, X, pk.FilterPruning(0.5), **kwargs)
    assert_unchanged(model, snapshot, text)


def test_labels_out_of_range_name_the_data():
    model = resnet_basic().eval()
    snapshot, text = state(model), repr(model)
    with pytest.raises(pk.ConfigError, match="labels run from 0 to 50.*10 classes"):
        pk.prune(model, X, pk.FilterPruning(0.5, "taylor"), data=[(X, torch.tensor([0, 50]))])
    assert_unchanged(model, snapshot, text)


def test_an_optimizer_given_to_prune_trains_the_pruned_model():
    torch.manual_seed(0)
    model = resnet_basic()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    model(X).sum().backward()
    optimizer.step()  # momentum buffers now exist, shaped like the unpruned parameters
    optimizer.zero_grad()
    model.eval()
    pk.prune(model, X, pk.FilterPruning(0.5), optimizer=optimizer)
    params = list(model.parameters())
    assert {id(p) for p in optimizer.param_groups[0]["params"]} == {id(p) for p in params}
    for p in params:
        assert optimizer.state[p]["momentum_buffer"].shape == p.shape
    before = [p.detach().clone() for p in params]
    model.train()
    model(X).sum().backward()
    optimizer.step()
    assert all(not torch.equal(a, p) for a, p in zip(before, params) if p.grad is not None)


class ImageAndText(torch.nn.Module):
    """A model called as model(image, text): its example inputs are a pair."""

    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 8, 3, padding=1)
        self.embed = torch.nn.Embedding(20, 8)
        self.head = torch.nn.Linear(8, 4)

    def forward(self, image, text):
        features = self.conv(image).relu().mean((2, 3)) + self.embed(text).mean(1)
        return self.head(features)


def two_input_batches(count=3):
    generator = torch.Generator().manual_seed(0)
    return [((torch.randn(4, 3, 8, 8, generator=generator),
              torch.randint(0, 20, (4, 5), generator=generator)),
             torch.randint(0, 4, (4,), generator=generator)) for _ in range(count)]


def test_a_pair_of_inputs_is_not_taken_for_inputs_and_targets():
    torch.manual_seed(0)
    model = ImageAndText().eval()
    batches = two_input_batches()
    example = batches[0][0]
    before = copy.deepcopy(model.state_dict())
    with pytest.raises(pk.ConfigError, match=r"pk.Batch\(inputs\)"):
        pk.prune(model, example, pk.FilterPruning(0.5, "apoz"),
                 data=[inputs for inputs, _ in batches])  # (image, text): two inputs, or x, y?
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    plans = []
    for data in ([pk.Batch(inputs) for inputs, _ in batches],  # said plainly
                 batches):  # ((image, text), labels): the first item is shaped like the inputs
        pruned = copy.deepcopy(model)
        plans.append(pk.prune(pruned, example, pk.FilterPruning(0.5, "apoz"), data=data).plan)
    assert plans[0].tensors == plans[1].tensors and plans[0].tensors
    labelled = [pk.Batch(inputs, labels) for inputs, labels in batches]
    taylor = pk.prune(copy.deepcopy(model), example, pk.FilterPruning(0.5, "taylor"),
                      data=labelled).plan
    assert taylor.tensors == pk.prune(copy.deepcopy(model), example,
                                      pk.FilterPruning(0.5, "taylor"), data=batches).plan.tensors
    with pytest.raises(pk.ConfigError, match="needs labelled batches"):
        pk.prune(copy.deepcopy(model), example, pk.FilterPruning(0.5, "taylor"),
                 data=[pk.Batch(inputs) for inputs, _ in batches])


def test_options_passed_by_position_still_work_with_a_deprecation_warning():
    import warnings

    from torch import nn

    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Conv2d(8, 4, 1)).eval()
    original, x = copy.deepcopy(model), torch.randn(1, 3, 8, 8)
    plan = pk.prune(model, x, pk.FilterPruning(0.5)).plan
    with pytest.warns(DeprecationWarning, match="pass tolerance= by keyword"):
        assert pk.verify(original, x, plan, 1e-3).tolerance == 1e-3
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert pk.verify(original, x, plan, tolerance=1e-2).tolerance == 1e-2
    with pytest.raises(TypeError, match="multiple values for 'tolerance'"):
        pk.verify(original, x, plan, 1e-3, tolerance=1e-2)


def test_results_print_as_sentences():
    from torch import nn

    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Conv2d(8, 4, 1)).eval()
    x = torch.randn(1, 3, 8, 8)
    text = str(pk.measure(model, x, min_time=0.01))
    assert text.startswith("params 260, FLOPs 17,856, latency") and "rounds" in text
    assert "nothing was pruned" in str(pk.prune(model, x, pk.FilterPruning(0.0)))
    assert "nothing was pruned" not in str(pk.prune(model, x, pk.FilterPruning(0.5)))
