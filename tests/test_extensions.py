"""Each extension point is one registration or one subclass, and works through every path:
a user's own method, criterion, coupling rule and module handler."""

import copy
import re
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from torch import nn

import prunekit as pk

from .helpers import outputs

DOCS = Path(__file__).resolve().parents[1] / "docs"


def small_cnn():
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
        nn.Conv2d(16, 16, 1), nn.BatchNorm2d(16), nn.ReLU(),
        nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, 4)).eval()


@dataclass
class ThreeByThreeFilters(pk.FilterPruning):
    """Prune only the groups whose producers are all 3×3 convolutions."""

    def candidates(self, graph):
        modules = dict(graph.model.named_modules())

        def from_3x3(group):
            producers = [modules[m.name.rsplit(".", 1)[0]] for m in group.members
                         if m.role == "out" and m.name.endswith("weight")]
            return producers and all(isinstance(p, nn.Conv2d) and p.kernel_size == (3, 3)
                                     for p in producers)

        return [g for g in super().candidates(graph) if from_3x3(g)]


def test_a_users_method_prunes_saves_and_reloads(tmp_path):
    model, x = small_cnn(), torch.randn(2, 3, 8, 8)
    original = copy.deepcopy(model)
    result = pk.prune(model, x, ThreeByThreeFilters(ratio=0.5))
    assert result.report.ok and "equivalent" in str(result.report)
    assert model[0].out_channels == 8 and model[6].out_channels == 16  # 3x3 producers
    assert model[3].out_channels == 16  # the 1x1 producer's group is not a candidate
    assert result.plan.method["method"] == "ThreeByThreeFilters"
    assert pk.PruningMethod.from_dict(result.plan.method) == ThreeByThreeFilters(ratio=0.5)
    pk.save(model, tmp_path, result.plan)
    restored = pk.load(copy.deepcopy(original), tmp_path)
    for a, b in zip(outputs(restored, x), outputs(model, x)):
        assert torch.equal(a, b)


def test_a_users_method_runs_iteratively_and_in_sensitivity():
    model, x = small_cnn(), torch.randn(2, 3, 8, 8)
    history = pk.iterative_prune(model, x, ThreeByThreeFilters(ratio=0.75), steps=2)
    assert len(history.steps) == 2 and model[3].out_channels == 16
    assert model[0].out_channels == 4  # 16 -> 8 -> 4: compounding to 0.75
    table = pk.sensitivity(small_cnn(), x, ratios=(0.5,), method=ThreeByThreeFilters(),
                           evaluate=lambda m: float(m(x).detach().abs().sum()))
    assert [row.group.split()[0] for row in table.rows] == ["0", "6"]  # only the 3x3 producers' groups


def test_the_command_line_keeps_its_names_when_users_subclass():
    from prunekit.methods import cli_methods

    assert cli_methods()["filter"] is pk.FilterPruning


class LargestWeight(pk.WeightCriterion):
    """Each channel's largest |weight| over the members shown."""

    def score(self, views, generator):
        return torch.stack([v.matrix.abs().amax(1).double() for v in views]).sum(0)


def test_a_registered_criterion_is_used_and_named_everywhere():
    pk.register_criterion("largest", LargestWeight(), scores=("channels", "heads"))
    assert "largest" in pk.criterion_names("channels") and "largest" in pk.criterion_names("heads")
    model = nn.Sequential(nn.Conv2d(3, 4, 1), nn.ReLU(), nn.Conv2d(4, 2, 1)).eval()
    with torch.no_grad():
        model[0].weight.fill_(0.1)
        model[0].weight[2, 0] = 5.0  # one large weight: only 'largest' ranks channel 2 first
        model[0].weight[1].fill_(0.2)  # the largest L1 norm
    result = pk.prune(model, torch.randn(1, 3, 4, 4), pk.FilterPruning(0.75, "largest"))
    assert result.plan.tensors["0.weight"][0] == [2]
    with pytest.raises(pk.ConfigError, match="unknown criterion 'largest' for layers"):
        pk.LayerPruning(criterion="largest")
    with pytest.raises(pk.ConfigError, match="WeightCriterion or DataCriterion"):
        pk.register_criterion("bad", object())


@torch.library.custom_op("prunekit_test::shifted_relu", mutates_args=())
def shifted_relu(x: torch.Tensor) -> torch.Tensor:
    return (x - 0.1).clamp_min(0)


@shifted_relu.register_fake
def _(x):
    return torch.empty_like(x)


class WithCustomOp(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Conv2d(3, 8, 1), nn.Conv2d(8, 2, 1)

    def forward(self, x):
        return self.b(torch.ops.prunekit_test.shifted_relu(self.a(x)))


def test_a_registered_rule_makes_a_custom_op_prunable():
    x = torch.randn(1, 3, 4, 4)
    graph = pk.DependencyGraph(WithCustomOp().eval(), x)
    assert graph.groups == [] and [u.op for u in graph.unknown_ops] == [
        "prunekit_test.shifted_relu"]
    pk.register_rule(torch.ops.prunekit_test.shifted_relu, pk.rules.pointwise)
    model = WithCustomOp().eval()
    result = pk.prune(model, x, pk.FilterPruning(0.5))
    assert model.a.out_channels == 4 and result.report.ok


class Scale(nn.Module):
    """A per-channel scale that checks its width against a tuple, where no trace can see it."""

    def __init__(self, channels):
        super().__init__()
        self.weight = nn.Parameter(torch.rand(channels) + 0.5)
        self.shape = (channels,)

    def forward(self, x):
        if x.shape[1:2] != self.shape:
            raise ValueError(f"expected {self.shape[0]} channels")
        return x * self.weight[:, None, None]


def test_a_registered_handler_keeps_a_custom_module_consistent():
    def model():
        torch.manual_seed(0)
        return nn.Sequential(nn.Conv2d(3, 8, 1), Scale(8), nn.Conv2d(8, 2, 1)).eval()

    x = torch.randn(1, 3, 4, 4)
    with pytest.raises(pk.PruneError, match="expected 8 channels"):
        pk.prune(model(), x, pk.FilterPruning(0.5))  # the only group breaks the model
    pk.register_handler(Scale, lambda m: setattr(m, "shape", tuple(m.weight.shape)))
    pruned = model()
    result = pk.prune(pruned, x, pk.FilterPruning(0.5))
    assert pruned[1].shape == (4,) and result.report.ok


class CountedScale(nn.Module):
    """Keeps its width as an int and compares it with the size it reads (diffusers' resamplers
    do this): the trace sees the read, so the count follows the pruned dim."""

    def __init__(self, channels, out_channels):
        super().__init__()
        self.weight = nn.Parameter(torch.rand(channels) + 0.5)
        self.channels, self.out_channels = channels, out_channels

    def forward(self, x):
        if x.size(1) != self.channels:
            raise ValueError(f"expected {self.channels} channels")
        return x * self.weight[:, None, None]


def test_a_count_compared_with_a_size_read_follows_the_dim():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 1), CountedScale(8, 5), nn.Conv2d(8, 2, 1)).eval()
    result = pk.prune(model, torch.randn(1, 3, 4, 4), pk.FilterPruning(0.5))
    assert result.skipped == [] and result.report.ok
    assert model[1].channels == 4 and model[1].weight.shape == (4,)
    assert model[1].out_channels == 5  # no size it read was 5: left as it was


def test_a_count_that_matches_two_prunable_dims_is_left_alone():
    class TwoWide(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Conv2d(3, 8, 1), nn.Conv2d(3, 8, 1)
            self.channels = 8

        def forward(self, x):
            p, q = self.a(x), self.b(x)
            assert p.shape[1] == q.shape[1] == self.channels  # which one does it count?
            return torch.cat([p, q], 1)

    model = nn.Sequential(TwoWide(), nn.Conv2d(16, 2, 1)).eval()
    with pytest.raises(pk.PruneError, match="AssertionError") as raised:
        pk.prune(model, torch.randn(1, 3, 4, 4), pk.FilterPruning(0.5))
    assert "group 0" in str(raised.value) and "group 1" in str(raised.value)
    assert model[0].channels == 8 and model[0].a.out_channels == 8  # unbound, untouched


def test_the_extension_examples_in_the_documentation_run():
    """Each of the extending page's examples alone, in a namespace of its own (the page as a
    whole runs in test_docs.py)."""
    page = DOCS / "how-to" / "extending.md"
    blocks = re.findall(r"```python\n(.*?)```", page.read_text(), re.S)
    assert len(blocks) == 5
    # the last registers a model source and an export format for good: it runs in a process
    # of its own, with the page, in test_docs.py
    for index, block in enumerate(blocks[:4]):
        exec(compile(block, f"{page.name} example {index}", "exec"), {})
