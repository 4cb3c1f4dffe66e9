"""Bad input gets a clear error naming what is wrong, and the model is left untouched."""

import copy

import pytest
import torch
from safetensors.torch import save_model
from torch import nn

import prunekit as pk

from .zoo import resnet_basic


def state(model: nn.Module) -> dict:
    return {k: v.clone() for k, v in model.state_dict().items()}


def assert_unchanged(model: nn.Module, snapshot: dict, text: str) -> None:
    after = model.state_dict()
    assert snapshot.keys() == after.keys()
    assert all(torch.equal(snapshot[k], after[k]) for k in snapshot)
    assert repr(model) == text


@pytest.fixture
def model():
    return resnet_basic().eval()


@pytest.mark.parametrize("ratio", [-0.1, 1.0, 1.5, "half", True])
def test_ratio_outside_range(ratio):
    with pytest.raises(pk.ConfigError, match="ratio"):
        pk.FilterPruning(ratio=ratio)


def test_a_criterion_given_as_the_ratio_says_where_it_goes():
    with pytest.raises(pk.ConfigError, match=r"ChannelPruning.ratio .* got 'l2' \(the criterion "
                                             r"is the second argument or criterion=, e.g. "
                                             r"criterion='l2'\)"):
        pk.ChannelPruning("l2", flops_target=0.5)


def test_unknown_criterion_names_the_choices():
    with pytest.raises(pk.ConfigError, match="unknown criterion 'l3'.*l1"):
        pk.ChannelPruning(criterion="l3")


def test_bad_round_to():
    with pytest.raises(pk.ConfigError, match="round_to"):
        pk.FilterPruning(round_to=0)


def test_ignore_module_not_in_model(model):
    snapshot, text = state(model), repr(model)
    with pytest.raises(pk.ConfigError, match="not part of the model"):
        pk.prune(model, torch.randn(1, 3, 16, 16), pk.FilterPruning(), ignore=[nn.Conv2d(3, 3, 1)])
    assert_unchanged(model, snapshot, text)


def test_inputs_that_do_not_run(model):
    snapshot, text = state(model), repr(model)
    with pytest.raises(pk.TraceError, match="do not run through the model.*'0.0.0'.*3 channels"):
        pk.prune(model, torch.randn(1, 5, 16, 16), pk.FilterPruning())
    assert_unchanged(model, snapshot, text)
    assert not model.training


def test_method_must_be_a_method(model):
    with pytest.raises(pk.ConfigError, match="pruning method"):
        pk.prune(model, torch.randn(1, 3, 16, 16), "filter")


class HardCodedWidth(nn.Module):
    """A forward with a literal width: pruning would break it, so pruning must roll back."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3)
        self.head = nn.Linear(8, 2)

    def forward(self, x):
        x = self.conv(x).mean(dim=(2, 3))
        return self.head(x[:, :8].reshape(-1, 8))


def test_pruning_that_breaks_the_model_is_refused_and_rolled_back():
    model = HardCodedWidth().eval()
    snapshot, text = state(model), repr(model)
    with pytest.raises(pk.PruneError, match="without breaking the model.*left unchanged"
                                            ".*conv.weight.*invalid for input"):
        pk.prune(model, torch.randn(1, 3, 8, 8), pk.FilterPruning(0.5))
    assert_unchanged(model, snapshot, text)
    assert model.conv.out_channels == 8 and model.conv.weight.shape[0] == 8


class PartlyHardCoded(nn.Module):
    """One branch has a literal width, the other does not: only the first is left alone."""

    def __init__(self):
        super().__init__()
        self.fixed, self.free = nn.Conv2d(3, 8, 1), nn.Conv2d(3, 8, 1)
        self.head = nn.Linear(16, 2)

    def forward(self, x):
        a = self.fixed(x).mean(dim=(2, 3)).reshape(-1, 8)  # literal width
        b = self.free(x).mean(dim=(2, 3))
        return self.head(torch.cat([a, b], dim=1))


def test_groups_that_break_the_model_are_skipped_and_reported():
    model = PartlyHardCoded().eval()
    result = pk.prune(model, torch.randn(1, 3, 4, 4), pk.FilterPruning(0.5))
    assert model.fixed.out_channels == 8 and model.free.out_channels == 4
    assert model.head.in_features == 12
    assert len(result.skipped) == 1
    assert "fixed.weight[out]" in result.skipped[0].group
    assert "invalid for input" in result.skipped[0].reason


def test_plan_that_does_not_fit(tmp_path, model):
    other = resnet_basic().eval()
    result = pk.prune(other, torch.randn(1, 3, 16, 16), pk.FilterPruning(0.5))
    smaller = nn.Sequential(nn.Conv2d(3, 4, 1))
    snapshot, text = state(smaller), repr(smaller)
    with pytest.raises(pk.PlanError, match="does not have"):
        pk.apply_plan(smaller, result.plan)
    assert_unchanged(smaller, snapshot, text)


def test_load_into_wrong_architecture_leaves_model_unchanged(tmp_path, model):
    pruned = copy.deepcopy(model)
    result = pk.prune(pruned, torch.randn(1, 3, 16, 16), pk.FilterPruning(0.5))
    pk.save(pruned, tmp_path, result.plan)
    fresh = copy.deepcopy(model)
    fresh[-1] = nn.Linear(32, 3)
    snapshot, text = state(fresh), repr(fresh)
    with pytest.raises(pk.PlanError, match="plan expects '3.weight' of shape"):
        pk.load(fresh, tmp_path)
    assert_unchanged(fresh, snapshot, text)


def test_load_weights_that_do_not_fit_leaves_model_unchanged(tmp_path, model):
    pruned = copy.deepcopy(model)
    result = pk.prune(pruned, torch.randn(1, 3, 16, 16), pk.FilterPruning(0.5))
    pk.save(pruned, tmp_path, result.plan)
    save_model(nn.Linear(2, 2), str(tmp_path / "model.safetensors"))  # the wrong weights
    fresh = copy.deepcopy(model)
    snapshot, text = state(fresh), repr(fresh)
    with pytest.raises(pk.PlanError, match="weights in .* hold .bias."):
        pk.load(fresh, tmp_path)
    assert_unchanged(fresh, snapshot, text)


def test_load_from_directory_without_files(tmp_path, model):
    with pytest.raises(pk.PlanError, match="plan.json"):
        pk.load(model, tmp_path)


def _mixed_modes(model: nn.Module) -> dict[str, bool]:
    """Train mode on the model, eval mode on every norm layer (a common fine-tuning set-up)."""
    model.train()
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.eval()
    return {name: m.training for name, m in model.named_modules()}


def test_pruning_keeps_each_modules_own_mode(model):
    modes = _mixed_modes(model)
    data = [torch.randn(2, 3, 16, 16) for _ in range(2)]
    pk.prune(model, data[0], pk.FilterPruning(0.5, criterion="apoz"), data=data)
    after = {name: m.training for name, m in model.named_modules()}
    assert after == modes and False in after.values() and True in after.values()


def test_a_failed_prune_keeps_each_modules_own_mode(model):
    modes = _mixed_modes(model)
    with pytest.raises(pk.TraceError):
        pk.prune(model, torch.randn(1, 5, 16, 16), pk.FilterPruning())
    assert {name: m.training for name, m in model.named_modules()} == modes


def test_a_module_replaced_while_evaluating_takes_the_models_mode():
    from prunekit.core.calls import evaluating

    model = nn.Sequential(nn.Linear(2, 2), nn.Dropout()).train()
    with evaluating(model):
        assert not any(m.training for m in model.modules())
        model[1] = nn.Dropout().eval()
    assert all(m.training for m in model.modules())


@pytest.mark.parametrize("removed_value", [None, float("inf"), float("nan")],
                         ids=["finite", "inf-removed", "nan-removed"])
@pytest.mark.parametrize("copy_limit", [0, 2**20], ids=["saved-slices", "whole-copy"])
@pytest.mark.parametrize("dims", [{0: [1, 3]}, {0: [0, 2], 1: [1]}, {1: [1], 0: [0, 2]},
                                  {1: [0], 2: [2]}, {0: [0], 1: [1, 2], 2: [0, 2]}])
def test_masking_zeroes_exactly_the_removed_channels_and_puts_them_back(dims, copy_limit,
                                                                          removed_value,
                                                                          monkeypatch):
    import importlib

    from prunekit.checks.verify import _mask_parameters

    # the module that masks, where COPY_LIMIT is read
    monkeypatch.setattr(importlib.import_module("prunekit.checks.masking"), "COPY_LIMIT",
                        copy_limit)

    holder = nn.Module()
    weights = torch.randn(4, 3, 3)
    removed_anywhere = torch.zeros(weights.shape, dtype=torch.bool)
    for dim, kept in dims.items():
        removed = [i for i in range(weights.shape[dim]) if i not in kept]
        removed_anywhere.index_fill_(dim, torch.tensor(removed), True)
    if removed_value is not None:  # a broken weight in a removed channel is still masked to 0
        weights[removed_anywhere] = removed_value
    holder.weight = nn.Parameter(weights)
    before = holder.weight.detach().clone()
    plan = pk.Plan(tensors={"weight": dims})
    (restore,) = _mask_parameters(holder, plan)
    masked = holder.weight.detach().clone()
    expected = torch.where(removed_anywhere, 0, before)
    assert torch.equal(masked, expected)
    with torch.no_grad():
        restore()
    torch.testing.assert_close(holder.weight.detach(), before, rtol=0, atol=0, equal_nan=True)


def test_masking_a_tied_tensor_zeroes_what_each_name_removes_and_each_tensor_on_its_own():
    """Small tensors are masked in one batched product: a tensor under two names loses the
    channels both remove, and a NaN in one tensor's removed channels sends only that one
    the slower way, the others keeping their own products."""
    from prunekit.checks.verify import _mask_parameters

    holder = nn.Module()
    holder.a, holder.b, holder.c = nn.Linear(3, 4), nn.Linear(3, 4), nn.Linear(3, 4)
    holder.b.weight = holder.a.weight  # tied
    with torch.no_grad():
        holder.c.weight[1] = float("nan")
    before = {name: p.detach().clone() for name, p in holder.named_parameters()}
    plan = pk.Plan(tensors={"a.weight": {0: [0, 2, 3]}, "b.weight": {1: [0, 2]},
                            "c.weight": {0: [0, 2, 3]}, "c.bias": {0: [0, 2, 3]}})
    undo = _mask_parameters(holder, plan)
    tied, other = holder.a.weight.detach(), holder.c.weight.detach()
    assert holder.b.weight is holder.a.weight
    assert torch.equal(tied[1], torch.zeros(3)) and torch.equal(tied[:, 1], torch.zeros(4))
    assert torch.equal(tied[[0, 2, 3]][:, [0, 2]], before["a.weight"][[0, 2, 3]][:, [0, 2]])
    assert torch.equal(other[1], torch.zeros(3)) and torch.equal(other[[0, 2, 3]],
                                                                 before["c.weight"][[0, 2, 3]])
    assert holder.c.bias[1] == 0
    with torch.no_grad():
        for restore in undo:
            restore()
    for name, p in holder.named_parameters():
        torch.testing.assert_close(p.detach(), before[name], rtol=0, atol=0, equal_nan=True)


class _CalledByKeyword(nn.Module):
    def __init__(self):
        super().__init__()
        self.first, self.second = nn.Linear(6, 8), nn.Linear(8, 4)

    def forward(self, x):
        return self.second(input=torch.relu(self.first(x)))


@pytest.mark.parametrize("holder", ["alone", "tied", "infinite"])
def test_a_large_linear_layer_masked_by_hooks_computes_what_its_zeroed_weight_would(
        holder, monkeypatch):
    """Every weight counts as large here: a linear layer's is masked by hooks on the layer
    (inputs zeroed on the way in, outputs on the way out, before a user's own forward hook),
    unless the weight is tied or not finite; either way the outputs are those of the zeroed
    weights, and undoing leaves no hook and the weights as they were."""
    import importlib

    from prunekit.checks.verify import _mask_parameters

    monkeypatch.setattr(importlib.import_module("prunekit.checks.masking"), "COPY_LIMIT", 0)
    torch.manual_seed(0)
    model = _CalledByKeyword().eval()
    if holder == "tied":
        model.other = nn.Linear(6, 8)
        model.other.weight = model.first.weight
    model.second.register_forward_hook(lambda _m, _a, out: out + 1)
    plan = pk.Plan(tensors={"first.weight": {0: [0, 2, 3, 5]}, "first.bias": {0: [0, 2, 3, 5]},
                            "second.weight": {1: [0, 2, 3, 5], 0: [1, 3]}})
    if holder == "infinite":
        with torch.no_grad():
            model.first.weight[1, 0] = float("inf")  # in a removed row
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    x = torch.randn(3, 6)
    zeroed = copy.deepcopy(model)
    pk.checks.mask(zeroed, plan)
    hooks_before = [len(model.first._forward_pre_hooks), len(model.second._forward_hooks)]

    undo = _mask_parameters(model, plan)
    through_hooks = len(model.second._forward_pre_hooks) > 0
    first_hooked = len(model.first._forward_hooks) > 0
    with torch.no_grad():
        assert torch.equal(model(x), zeroed(x))
        for restore in undo:
            restore()
    assert through_hooks  # the second layer's weight is held by it alone, finite
    assert first_hooked == (holder == "alone")
    assert [len(model.first._forward_pre_hooks), len(model.second._forward_hooks)] == hooks_before
    assert not model.second._forward_pre_hooks and not model.first._forward_hooks
    for name, p in model.named_parameters():
        torch.testing.assert_close(p.detach(), before[name], rtol=0, atol=0, equal_nan=True)


def test_pruning_large_linear_layers_passes_its_check_with_them_masked_by_hooks(monkeypatch):
    """The whole check with every linear layer masked by hooks: a mask that did not compute
    what the pruned model does would fail it, and the groups would come back skipped."""
    import importlib

    monkeypatch.setattr(importlib.import_module("prunekit.checks.masking"), "COPY_LIMIT", 0)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 32), nn.GELU(), nn.Linear(32, 32), nn.Tanh(),
                          nn.Linear(32, 4)).eval()
    result = pk.prune(model, torch.randn(2, 16), pk.FilterPruning(0.5, "l1"))
    assert not result.skipped and result.report.ok
    assert model[0].out_features == 16 and model[2].out_features == 16
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in model.modules())


def test_an_eval_model_stays_in_eval_mode_whatever_the_block_did():
    from prunekit.core.calls import evaluating

    model = nn.Sequential(nn.Linear(2, 2), nn.Dropout(), nn.Dropout()).eval()
    with evaluating(model):
        model[1] = nn.Dropout()  # a new module, in train mode as built
        model[2].train()  # a module the block switched
    assert not any(m.training for m in model.modules())


def test_the_tensors_of_an_output_are_found_in_the_order_their_paths_name_them():
    from collections import OrderedDict, namedtuple
    from dataclasses import dataclass

    from prunekit.core.calls import iter_tensors, named_tensors

    @dataclass
    class Boxes:
        xyxy: torch.Tensor
        scores: list

    class Holder:
        def __init__(self):
            self.first = torch.zeros(1)
            self.nothing = None
            self.self = self  # a cycle ends

    Pair = namedtuple("Pair", "a b")
    shared = torch.ones(2)
    output = (OrderedDict(logits=torch.randn(2), extra=[shared, 3, "text"]),
              Pair(torch.randn(1), {"deep": (torch.randn(3), shared)}),
              Boxes(torch.randn(4), [torch.randn(5), nn.Linear(1, 1)]), Holder(), 2.0)
    named = list(named_tensors(output))
    found = list(iter_tensors(output))
    assert len(found) == len(named) == 8  # the shared tensor twice, the cycle once
    assert all(a is b for a, (_, b) in zip(found, named))
