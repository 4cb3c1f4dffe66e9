"""Plans are plain JSON, versioned, and replay on a fresh model of the same architecture."""

import json

import pytest
import torch

import prunekit as pk

from .helpers import outputs
from .zoo import resnet_bottleneck


def test_plan_round_trips_through_json():
    model = resnet_bottleneck().eval()
    plan = pk.prune(model, torch.randn(1, 3, 16, 16), pk.ChannelPruning(0.3, "l2")).plan
    text = plan.to_json()
    data = json.loads(text)
    assert data["format"] == "prunekit.plan" and data["version"] == 1
    assert data["method"]["method"] == "ChannelPruning" and data["method"]["ratio"] == 0.3
    assert pk.Plan.from_json(text) == plan


def test_plan_replays_on_a_fresh_model():
    torch.manual_seed(0)
    model = resnet_bottleneck().eval()
    fresh = resnet_bottleneck().eval()
    fresh.load_state_dict(model.state_dict())
    x = torch.randn(1, 3, 16, 16)
    plan = pk.prune(model, x, pk.FilterPruning(0.5)).plan
    pk.apply_plan(fresh, pk.Plan.from_json(plan.to_json()))
    assert {k: v.shape for k, v in fresh.state_dict().items()} == \
        {k: v.shape for k, v in model.state_dict().items()}
    for a, b in zip(outputs(model, x), outputs(fresh, x)):
        assert torch.equal(a, b)


def test_plan_of_another_version_is_refused():
    with pytest.raises(pk.PlanError, match="version 99"):
        pk.Plan.from_dict({"format": "prunekit.plan", "version": 99})


def test_method_round_trips():
    method = pk.FilterPruning(ratio=0.25, criterion="l2", round_to=4, overrides={"conv1": 0.1})
    assert pk.FilterPruning.from_dict(method.to_dict()) == method


def test_round_to_and_overrides():
    model = resnet_bottleneck().eval()
    x = torch.randn(1, 3, 16, 16)
    result = pk.prune(model, x, pk.FilterPruning(0.5, round_to=3, overrides={"0.1.conv1": 0.0}))
    assert model[0][1].conv1.out_channels == 8  # override: this group is left alone
    for group in result.plan.groups:
        assert group["kept"] % 3 == 0 or group["kept"] == group["size"]
