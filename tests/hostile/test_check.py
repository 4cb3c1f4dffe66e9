"""Promise: "masked and pruned models agree on every output tensor" is a check that can fail.

Attacks: outputs that alias a buffer or the caller's input, constant example inputs, the
float64 check on shared or memory-mapped storage, pk.verify against pk.prune's own check,
and NaN on one side of an export check."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

import prunekit as pk
from prunekit.checks.verify import widened
from prunekit.core.calls import largest_difference as _difference


class ConvNet(nn.Module):
    """conv -> BN -> ReLU -> conv, its output written where ``into`` says."""

    def __init__(self, into: str = "return"):
        super().__init__()
        torch.manual_seed(0)
        self.conv1 = nn.Conv2d(4, 8, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(8)
        self.conv2 = nn.Conv2d(8, 4, 3, padding=1)
        self.into = into
        self.register_buffer("result", torch.zeros(2, 4, 6, 6))

    def forward(self, x):
        y = self.conv2(torch.relu(self.bn(self.conv1(x))))
        if self.into == "buffer":
            return self.result.copy_(y)
        if self.into == "input":
            return x.copy_(y)
        return y


def mismatched_plan(model: nn.Module) -> pk.Plan:
    """conv1 keeps channels 0-3, conv2 reads what it thinks are 4-7: a plan that changes
    what the model computes, so an honest check must fail it."""
    return pk.Plan(tensors={"conv1.weight": {0: [0, 1, 2, 3]},
                            "bn.weight": {0: [0, 1, 2, 3]}, "bn.bias": {0: [0, 1, 2, 3]},
                            "bn.running_mean": {0: [0, 1, 2, 3]},
                            "bn.running_var": {0: [0, 1, 2, 3]},
                            "conv2.weight": {1: [4, 5, 6, 7]}},
                   shapes={name: list(t.shape) for name, t in model.state_dict().items()})


def x():
    return torch.randn(2, 4, 6, 6, generator=torch.Generator().manual_seed(1))


@pytest.mark.parametrize("into", ["return", "buffer", "input"])
def test_a_plan_that_changes_outputs_fails_however_the_output_is_written(into):
    model = ConvNet(into).eval()
    report = pk.verify(model, x(), mismatched_plan(model))
    assert not report.ok, report


def test_outputs_written_into_the_input_leave_the_callers_input_alone():
    model, inputs = ConvNet("input").eval(), x()
    before = inputs.clone()
    result = pk.prune(model, inputs, pk.FilterPruning(0.5))
    assert result.report.ok
    assert torch.equal(inputs, before)


@pytest.mark.parametrize("fill", [0.0, 1.0])
def test_constant_example_inputs_are_not_a_vacuous_check(fill):
    model = ConvNet().eval()
    constant = torch.full((2, 4, 6, 6), fill)
    report = pk.verify(model, constant, mismatched_plan(model))
    assert not report.ok, report
    assert "constant" in str(report)


def test_constant_example_inputs_still_prune_and_say_what_was_checked():
    model = ConvNet().eval()
    result = pk.prune(model, torch.zeros(2, 4, 6, 6), pk.FilterPruning(0.5))
    assert result.report.ok
    assert "random inputs" in str(result.report)


def test_constant_inputs_a_model_cannot_vary_on_are_refused_in_one_line():
    class NeedsOnes(ConvNet):
        def forward(self, x):
            if not bool((x == 1).all()):
                raise ValueError("only ones")
            return super().forward(x)

    model = NeedsOnes().eval()
    with pytest.raises(pk.ConfigError, match="example_inputs: every value is the same"):
        pk.prune(model, torch.ones(2, 4, 6, 6), pk.FilterPruning(0.5))


def test_the_float64_check_keeps_shared_storage_shared_and_hands_back_the_same_data():
    first = nn.Linear(6, 6)
    second = nn.Linear(6, 6)
    second.weight = nn.Parameter(first.weight.data)  # two parameters, one storage
    model = nn.Sequential(first, second)
    pointers = [p.data_ptr() for p in model.parameters()]
    with widened(model):
        assert first.weight.dtype == torch.float64
        with torch.no_grad():
            first.weight[0, 0] = 123.0
        assert second.weight[0, 0] == 123.0  # a write through one reaches the other
        with torch.no_grad():
            first.weight[0, 0] = 0.0
    assert [p.data_ptr() for p in model.parameters()] == pointers
    assert first.weight.dtype == torch.float32


def test_the_float64_check_leaves_memory_mapped_weights_mapped(tmp_path):
    model = nn.Linear(8, 8)
    torch.save(model.state_dict(), tmp_path / "w.pt")
    state = torch.load(tmp_path / "w.pt", mmap=True, weights_only=True)
    model.load_state_dict(state, assign=True)
    pointer = model.weight.data_ptr()
    with widened(model):
        pass
    assert model.weight.data_ptr() == pointer


class ChoosesByOrder(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(3, 8, 3)
        self.head = nn.Conv2d(8, 4, 1)

    def forward(self, x):
        scores = self.head(torch.relu(self.conv(x))).flatten(1)
        top = scores.topk(5, dim=1).indices
        return scores.gather(1, top)


def test_pk_verify_is_the_same_check_as_pk_prunes_own():
    model = ChoosesByOrder().eval()
    inputs = torch.randn(2, 3, 8, 8)
    original = copy.deepcopy(model)
    result = pk.prune(model, inputs, pk.FilterPruning(0.5))
    report = pk.verify(original, inputs, result.plan)
    assert "float64" in str(result.report)
    assert report.inputs == result.report.inputs


@pytest.mark.parametrize("got, want", [
    (torch.tensor([1.0, 2.0]), torch.tensor([1.0, float("nan")])),
    (torch.tensor([1.0, float("nan")]), torch.tensor([1.0, 2.0])),
    (torch.tensor([1.0, float("inf")]), torch.tensor([1.0, float("-inf")])),
    (torch.tensor([float("nan")]), torch.tensor([float("inf")])),
])
def test_an_export_check_fails_on_nan_or_inf_on_one_side(got, want):
    assert _difference([got], [want]) == float("inf")


def test_an_export_check_compares_the_finite_values_beside_matching_nans():
    nan = float("nan")
    assert _difference([torch.tensor([1.0, nan])], [torch.tensor([1.0, nan])]) == 0
    assert _difference([torch.tensor([1.5, nan])], [torch.tensor([1.0, nan])]) == 0.5


def test_export_to_a_folder_is_refused_before_any_work(tmp_path):
    (tmp_path / "out.onnx").mkdir()
    with pytest.raises(pk.ConfigError, match="is a folder"):
        pk.export(nn.Linear(3, 3), torch.randn(1, 3), tmp_path / "out.onnx")


def test_the_example_inputs_given_as_data_too_are_checked_once():
    model, inputs = ConvNet().eval(), x()
    result = pk.prune(model, inputs, pk.FilterPruning(0.5, "apoz"), data=[inputs])
    assert result.report.inputs == "the example inputs"
