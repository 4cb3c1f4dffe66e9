"""Promise: "a plan is plain data, replayed on a fresh model; a plan that does not fit is
refused and the model left as it was".

Attacks: plan edits that validation let through and that silently changed outputs: a
count set without the indices that imply it, a layer that is not a block."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import prunekit as pk


class GroupNormNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3)
        self.norm = nn.GroupNorm(4, 8)
        self.act = nn.ReLU()
        self.head = nn.Conv2d(8, 4, 1)

    def forward(self, x):
        return self.head(self.act(self.norm(self.conv(x))))


def shapes(model):
    return {name: list(t.shape) for name, t in model.state_dict().items()}



def apply(model, plan):
    from prunekit.surgery.apply import apply_plan

    return apply_plan(model, plan)


@pytest.mark.parametrize("edit, match", [
    ({"attributes": {"norm": {"num_groups": 1}}}, "do not imply"),
    ({"layers": ["act"]}, "holds no weights"),
    ({"layers": ["norm"]}, "normalisation layer"),
])
def test_a_plan_cannot_change_what_it_does_not_shrink(edit, match):
    model = GroupNormNet().eval()
    plan = pk.Plan(**edit)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    text = repr(model)
    with pytest.raises(pk.PlanError, match=match):
        apply(model, plan)
    assert repr(model) == text
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())


def test_a_group_count_that_follows_the_kept_channels_still_applies():
    model = GroupNormNet().eval()
    kept = [0, 1, 2, 3]  # the first two of four groups of two channels
    plan = pk.Plan(tensors={"conv.weight": {0: kept}, "conv.bias": {0: kept},
                            "norm.weight": {0: kept}, "norm.bias": {0: kept},
                            "head.weight": {1: kept}},
                   shapes=shapes(model), attributes={"norm": {"num_groups": 2}})
    apply(model, plan)
    assert model.norm.num_groups == 2 and model.norm.num_channels == 4


def test_a_head_count_set_alone_is_refused():
    attention = nn.MultiheadAttention(16, 4, batch_first=True)
    with pytest.raises(pk.PlanError, match="do not imply"):
        apply(attention, pk.Plan(attributes={"": {"num_heads": 2}}))
    assert attention.num_heads == 4


def test_a_pruned_plan_with_a_forged_count_is_refused():
    model = GroupNormNet().eval()
    result = pk.prune(GroupNormNet().eval(), torch.randn(2, 3, 8, 8), pk.FilterPruning(0.5))
    plan = pk.Plan.from_dict(result.plan.to_dict())
    assert plan.attributes["norm"]["num_groups"] == 2  # half the channels, half the groups
    plan.attributes["norm"]["num_groups"] = 1  # four channels a group: other outputs
    with pytest.raises(pk.PlanError, match="do not imply"):
        apply(model, plan)
