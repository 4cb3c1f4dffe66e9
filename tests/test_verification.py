"""Verification checks what it says: every output structure, per-output tolerances that follow
dtype, NaN, empty batches, data batches for other control-flow paths, and the difference
between a plan that breaks the model and a check that is itself broken."""

from __future__ import annotations

import copy
import sys
from collections import namedtuple
from dataclasses import dataclass

import pytest
import torch
import torchvision
from torch import nn

import prunekit as pk
from prunekit.checks.checks import Check
from prunekit.checks.comparison import compare_outputs
from prunekit.errors import TraceError

from .helpers import outputs


@dataclass
class Prediction:
    logits: torch.Tensor
    features: torch.Tensor


class Holder:  # a plain object with tensors in its attributes
    def __init__(self, logits, extra):
        self.logits, self.extra = logits, extra


Pair = namedtuple("Pair", "logits features")


class Classifier(nn.Module):
    def __init__(self, wrap):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 16, 3, padding=1)
        self.conv2 = nn.Conv2d(16, 16, 3, padding=1)
        self.head = nn.Linear(16, 4)
        self.wrap = wrap

    def forward(self, x):
        features = self.conv2(torch.relu(self.conv1(x))).mean((2, 3))
        return self.wrap(self.head(features), features)


@pytest.mark.parametrize("wrap", [Prediction, Holder, Pair, lambda a, b: {"out": [a, (b,)]}],
                         ids=["dataclass", "object", "namedtuple", "nested"])
def test_every_output_structure_is_protected_and_compared(wrap):
    torch.manual_seed(0)
    model, x = Classifier(wrap), torch.randn(2, 3, 8, 8)
    original = copy.deepcopy(model)
    result = pk.prune(model, x, pk.FilterPruning(0.5, "l1"))
    assert model.head.out_features == 4  # the output layer keeps its classes
    assert model.conv1.out_channels == 8
    assert len(result.report.outputs) == 2  # both output tensors were compared
    for a, b in zip(outputs(original, x), outputs(model, x)):
        assert a.shape == b.shape


def test_an_output_without_tensors_is_refused():
    class Opaque:
        __slots__ = ("value",)

        def __init__(self, value):
            self.value = value

    model = Classifier(lambda logits, _: Opaque(logits))
    before = copy.deepcopy(model.state_dict())
    with pytest.raises(TraceError, match="holding no tensors"):
        pk.prune(model, torch.randn(1, 3, 8, 8), pk.FilterPruning(0.5))
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_an_empty_batch_is_refused():
    model = Classifier(lambda a, b: a)
    with pytest.raises(pk.ConfigError, match="example_inputs is empty"):
        pk.prune(model, torch.randn(0, 3, 8, 8), pk.FilterPruning(0.5))


@pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::UserWarning")
def test_a_quantized_model_is_refused():
    model = torch.ao.quantization.quantize_dynamic(
        nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 2)), {nn.Linear})
    with pytest.raises(pk.ConfigError, match="quantized"):
        pk.prune(model, torch.randn(1, 8), pk.FilterPruning(0.5))


def test_tolerance_is_per_output_and_nan_anywhere_fails():
    scores = torch.rand(10, dtype=torch.float64)
    big = torch.randn(10, dtype=torch.float64) * 1000
    expected = {"[0]": big, "[1]": scores}
    off = compare_outputs(expected, {"[0]": big, "[1]": scores + 0.02}, 1e-4)
    assert [c.ok for c in off] == [True, False]  # 2% of a [0, 1] output, beside a x1000 one
    nan = scores.clone()
    nan[3] = float("nan")
    assert not all(c.ok for c in compare_outputs(expected, {"[0]": big, "[1]": nan}, 1e-4))
    assert all(c.ok for c in compare_outputs(expected, expected, 1e-4))


def test_half_precision_tolerance_follows_the_dtype_and_still_catches_errors():
    x = torch.randn(100, dtype=torch.float64)
    rounded = x.to(torch.bfloat16)
    one_ulp = (x * (1 + 2 ** -8)).to(torch.bfloat16)  # bf16 rounding noise
    assert all(c.ok for c in compare_outputs({"o": rounded}, {"o": one_ulp}, 1e-4))
    wrong = (x * 1.2).to(torch.bfloat16)
    assert not any(c.ok for c in compare_outputs({"o": rounded}, {"o": wrong}, 1e-4))
    # float32 keeps the caller's tolerance
    assert not all(c.ok for c in compare_outputs({"o": x.float()}, {"o": (x * (1 + 2 ** -8)).float()},
                                                 1e-4))


def test_bfloat16_resnet_prunes_every_group():
    torch.manual_seed(0)
    model = torchvision.models.resnet18(num_classes=10).to(torch.bfloat16).eval()
    x = torch.randn(1, 3, 64, 64, dtype=torch.bfloat16)
    result = pk.prune(model, x, pk.FilterPruning(0.5, "l1"))
    assert result.skipped == [], [s.reason for s in result.skipped]
    assert "bfloat16" in str(result.report)


class Branchy(nn.Module):
    """Inputs with a negative mean take a path that reads a parameter the other path never
    touches: pruning the channels it scales breaks only that path."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 16, 3, padding=1)
        self.conv1 = nn.Conv2d(16, 16, 3, padding=1)
        self.conv2 = nn.Conv2d(16, 16, 3, padding=1)
        self.scale = nn.Parameter(torch.ones(1, 16, 1, 1))
        self.head = nn.Linear(16, 4)

    def forward(self, x):
        h = torch.relu(self.conv1(torch.relu(self.stem(x))))
        h = self.conv2(h) if x.mean() > 0 else h * self.scale
        return self.head(h.mean((2, 3)))


def test_data_batches_check_the_paths_the_example_inputs_do_not_take():
    torch.manual_seed(0)
    x = torch.randn(2, 3, 8, 8).abs()  # positive mean: the conv2 path
    other_path = [-torch.randn(2, 3, 8, 8).abs()]
    unchecked = Branchy()
    pk.prune(unchecked, x, pk.FilterPruning(0.5))
    with pytest.raises(RuntimeError):  # verified on the example inputs only: broken elsewhere
        unchecked(other_path[0])

    model = Branchy()
    result = pk.prune(model, x, pk.FilterPruning(0.5), data=other_path)
    model(other_path[0])  # the groups that break the other path were left unpruned
    assert any("conv1" in s.group for s in result.skipped)
    assert model.stem.out_channels == 8  # what is safe on both paths was pruned
    assert "1 batch of data" in str(result.report)


class FaultyCheck(Check):
    def run(self, model, inputs, plan):
        raise TypeError("a bug in the check")


class CheckedFilters(pk.FilterPruning):
    def check(self, verify, tolerance):
        return FaultyCheck()


def test_a_fault_in_the_check_is_raised_not_taken_for_a_broken_model():
    model = Classifier(lambda a, b: a)
    before = copy.deepcopy(model.state_dict())
    with pytest.raises(TypeError, match="a bug in the check"):
        pk.prune(model, torch.randn(1, 3, 8, 8), CheckedFilters(0.5))
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


class CountedApplications:
    def __init__(self, monkeypatch):
        from prunekit.surgery import apply
        self.count, prepare = 0, apply.prepare

        def counted(model, plan):
            self.count += 1
            return prepare(model, plan)

        monkeypatch.setattr(apply, "prepare", counted)


def test_a_plan_that_passes_at_once_is_kept_not_undone_and_applied_again(monkeypatch):
    torch.manual_seed(0)
    model, x = Classifier(lambda a, b: a), torch.randn(2, 3, 8, 8)
    original = copy.deepcopy(model)
    applications = CountedApplications(monkeypatch)
    result = pk.prune(model, x, pk.FilterPruning(0.5, "l1"))
    assert applications.count == 1 and result.report.ok
    assert model.conv1.out_channels == 8
    assert pk.verify(original, torch.randn(2, 3, 8, 8), result.plan).ok


@pytest.mark.parametrize("other_path", [False, True], ids=["passes", "bisected"])
def test_only_a_whole_proposal_that_passes_at_once_is_kept(other_path):
    from prunekit.checks import CheckInputs, Equivalence, largest_passing_plan

    torch.manual_seed(0)
    model, x = Branchy(), torch.randn(2, 3, 8, 8).abs()
    inputs = CheckInputs(x, [-torch.randn(2, 3, 8, 8).abs()] if other_path else [])
    proposal = pk.FilterPruning(0.5).propose(model, x, pk.PruneContext())
    before, kept = copy.deepcopy(model.state_dict()), []
    outcome = largest_passing_plan(model, inputs, proposal, Equivalence(),
                                   keep=lambda pruned, plan: kept.append(plan))
    if other_path:  # the first try failed: nothing kept, the model left as it was found
        assert outcome.skipped and not outcome.kept and kept == []
        assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    else:
        assert outcome.kept and kept == [outcome.plan] and outcome.tries == 1
        assert model.stem.out_channels == 8


class OnlyRuns(Check):
    """A check written as the base class asks: ``run`` alone, no ``run_and_keep``."""

    def run(self, model, inputs, plan):
        return pk.checks.Equivalence().run(model, inputs, plan)


class OnlyRunsFilters(pk.FilterPruning):
    def check(self, verify, tolerance):
        return OnlyRuns()


def test_a_check_that_only_runs_is_kept_by_applying_its_plan_after_it_passes():
    torch.manual_seed(0)
    model, x = Classifier(lambda a, b: a), torch.randn(2, 3, 8, 8)
    original = copy.deepcopy(model)
    result = pk.prune(model, x, OnlyRunsFilters(0.5))
    assert result.report.ok and model.conv1.out_channels == 8
    assert pk.verify(original, x, result.plan).ok


def test_the_result_says_what_was_skipped_and_what_was_checked():
    torch.manual_seed(0)
    model = Branchy()
    result = pk.prune(model, torch.randn(2, 3, 8, 8).abs(), pk.FilterPruning(0.5),
                      data=[-torch.randn(2, 3, 8, 8).abs()])
    text = str(result)
    assert "left unpruned" in text and "conv1" in text and "RuntimeError" in text
    assert "check: equivalent" in text


def test_exact_and_empty_outputs_are_reported_without_failing():
    index = torch.tensor([1, 2, 3])
    none = torch.zeros(0, 6)
    values = torch.rand(4, dtype=torch.float64)
    from prunekit.checks.comparison import VerifyReport
    outputs = compare_outputs({"i": index, "boxes": none, "v": values},
                              {"i": index, "boxes": none, "v": values}, 1e-4)
    report = VerifyReport(outputs, 1e-4)
    assert report.ok and "equivalent" in str(report)
    assert not VerifyReport(compare_outputs({"boxes": none}, {"boxes": none}, 1e-4), 1e-4).ok
    changed = compare_outputs({"i": index}, {"i": index + 1}, 1e-4)
    assert not VerifyReport(changed, 1e-4).ok and "compared exactly" in str(VerifyReport(changed, 1e-4))


class RunningMax(nn.Module):
    def __init__(self):
        super().__init__()
        self.first, self.second = nn.Linear(8, 16), nn.Linear(16, 4)

    def forward(self, x):
        return self.second(torch.cummax(self.first(x), dim=1)[0])  # mixes the channels


def test_an_op_without_a_rule_is_named_in_the_result_not_passed_over_in_silence():
    result = pk.prune(RunningMax().eval(), torch.randn(2, 8), pk.FilterPruning(0.5))
    assert [(op.op, op.module) for op in result.unknown_ops] == [("torch.cummax", "<model>")]
    assert "no coupling rule for torch.cummax in <model>" in str(result)



class TopScores(nn.Module):
    """Scores close together, and the positions of the best of them as the output: a
    detector's query selection in miniature."""

    def __init__(self):
        super().__init__()
        self.features = nn.Conv1d(8, 300, 1)
        self.score = nn.Conv1d(300, 1, 1)

    def forward(self, x):
        scores = self.score(torch.relu(self.features(x)))[:, 0]
        return scores.topk(200, dim=1).indices


def _model_and_input():
    torch.manual_seed(0)
    model = TopScores().eval()
    return model, 1 + 1e-4 * torch.randn(1, 8, 4000)


def test_outputs_chosen_by_order_are_compared_in_float64():
    """With 300 channels summed, the masked and the pruned model may round differently (how
    often depends on the CPU's summation blocking), and among scores this close a flipped
    choice would fail the check; in float64 it passes wherever it runs."""
    model, x = _model_and_input()
    dtypes = {n: p.dtype for n, p in model.named_parameters()}
    result = pk.prune(model, x, pk.FilterPruning(0.5))
    assert result.skipped == [] and result.report.ok
    assert "in float64 (Tensor.topk in <model> chooses by order)" in str(result.report)
    assert {n: p.dtype for n, p in model.named_parameters()} == dtypes


class Float32Inside(TopScores):
    def forward(self, x):
        return super().forward(x @ torch.eye(x.shape[-1], dtype=torch.float32))


def test_a_model_that_cannot_run_in_float64_is_compared_in_its_own_precision_and_says_so():
    torch.manual_seed(0)
    model = Float32Inside().eval()
    result = pk.prune(model, torch.randn(1, 8, 400), pk.FilterPruning(0.5))
    assert result.report.ok and "in float64" not in str(result.report).split("(")[0]
    assert "compared in its own precision although Tensor.topk" in str(result.report)
    assert all(p.dtype == torch.float32 for p in model.parameters())


class Cancelling(nn.Module):
    """Returns the difference of two outputs of one layer that are each about 1e5 and differ
    by about 1: float32 rounds each to within 1e-2, so summing the layer's products in
    another order (the pruned layer's) moves what it returns by 1e-3 of its scale, as
    SmolLM2's first layers, whose hidden states run in the thousands, move its logits."""

    def __init__(self):
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(16, 256), nn.Linear(256, 16)
        with torch.no_grad():
            base = torch.randn(8, 256) * 1e4
            self.fc2.weight.copy_(torch.cat([base + torch.randn(8, 256), base]))

    def forward(self, x):
        y = self.fc2(torch.relu(self.fc1(x)))
        return y[..., :8] - y[..., 8:]


class WidthLeaks(nn.Module):
    """A wrong plan off by rounding's size: its output moves with its hidden width."""

    def __init__(self):
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(16, 256), nn.Linear(256, 8)

    def forward(self, x):
        h = torch.relu(self.fc1(x))
        return self.fc2(h) + 1e-5 * h.shape[-1]


def test_a_check_failed_by_float32_rounding_is_decided_in_float64(monkeypatch):
    torch.manual_seed(0)
    model, x = Cancelling().eval(), torch.randn(4, 16)
    verification = sys.modules["prunekit.checks.verify"]
    with monkeypatch.context() as patched:  # without the second look, rounding refuses it
        patched.setattr(verification, "ROUNDING_SUSPECT", 0.0)
        with pytest.raises(pk.PruneError, match=r"NOT equivalent.*float32"):
            pk.prune(copy.deepcopy(model), x, pk.FilterPruning(0.5))
    result = pk.prune(model, x, pk.FilterPruning(0.5))
    assert result.report.ok and result.skipped == [] and model.fc1.out_features == 128
    assert "in float64 (in float32 they differed by" in str(result.report)
    assert result.report.relative_diff < 1e-9
    assert all(p.dtype == torch.float32 for p in model.parameters())


def test_a_wrong_plan_off_by_rounding_size_still_fails_in_float64():
    torch.manual_seed(0)
    model, x = WidthLeaks().eval(), torch.randn(4, 16)
    before = copy.deepcopy(model.state_dict())
    with pytest.raises(pk.PruneError, match=r"in float64 \(in float32 .*tolerance 0.0001 "
                                            r"for float64"):
        pk.prune(model, x, pk.FilterPruning(0.5))
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_the_report_counts_a_models_outputs_once_however_many_inputs_it_checked():
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Conv2d(8, 4, 3)).eval()
    x = torch.randn(1, 3, 12, 12)
    result = pk.prune(model, x, pk.FilterPruning(0.5, "l1"),
                      data=[torch.randn(2, 3, 12, 12) for _ in range(2)])
    text = str(result.report)
    assert "1 output tensor on the example inputs and 2 batches of data" in text, text
