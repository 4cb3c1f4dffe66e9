"""One transaction for everything pk.prune does, and checkpoints that cannot be lost: every
failure here leaves the model (and the files on disk) exactly as they were."""

from __future__ import annotations

import copy
import json

import pytest
import torch
import transformers

import prunekit as pk
from prunekit.export import saving as io

from .test_errors import assert_unchanged, state
from .zoo import resnet_basic

X = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(0))


@pytest.fixture
def model():
    return resnet_basic().eval()


class InterruptedRecovery(pk.FilterPruning):
    def recovery(self, model, context):
        def interrupt(pruned, plan):
            raise KeyboardInterrupt
        return interrupt


class FailingConfigUpdate(pk.FilterPruning):
    def update_config(self, model):
        raise RuntimeError("config update failed")


@pytest.mark.parametrize("method, error", [(InterruptedRecovery(0.5), KeyboardInterrupt),
                                           (FailingConfigUpdate(0.5), RuntimeError)])
def test_everything_after_the_plan_is_applied_is_rolled_back(model, method, error):
    snapshot, text = state(model), repr(model)
    with pytest.raises(error):
        pk.prune(model, X, method)
    assert_unchanged(model, snapshot, text)


@pytest.mark.parametrize("data", [[], iter([])], ids=["empty list", "empty iterator"])
def test_empty_data_is_refused_before_anything_runs(model, data):
    snapshot, text = state(model), repr(model)
    with pytest.raises(pk.ConfigError, match="data has no batches"):
        pk.prune(model, X, pk.ChannelPruning(0.5, reconstruct=True), data=data)
    assert_unchanged(model, snapshot, text)


def test_data_the_model_cannot_run_is_refused_naming_data(model):
    with pytest.raises(pk.ConfigError, match="data: the model does not run on the first batch"):
        pk.prune(model, X, pk.FilterPruning(0.5, "apoz"), data=[torch.randn(2, 5)])


def test_a_generator_feeds_scoring_verification_and_reconstruction(model):
    batches = (torch.randn(2, 3, 16, 16) for _ in range(3))
    result = pk.prune(model, X, pk.ChannelPruning(0.5, reconstruct=True), data=batches)
    assert not result.plan.is_empty and "2 batches of data" in str(result.report)


def test_a_shared_config_is_never_changed_under_another_model(tmp_path):
    config = transformers.BertConfig(hidden_size=32, num_attention_heads=4, intermediate_size=64,
                                     num_hidden_layers=2, vocab_size=100)
    student, teacher = transformers.BertModel(config).eval(), transformers.BertModel(config)
    tokens = {"input_ids": torch.randint(0, 100, (2, 8))}
    result = pk.prune(student, tokens, pk.LayerPruning(1, "last"))
    assert result.config_matches
    assert student.config.num_hidden_layers == 1
    assert teacher.config.num_hidden_layers == 2 and config.num_hidden_layers == 2
    teacher.save_pretrained(tmp_path / "teacher")
    transformers.BertModel.from_pretrained(tmp_path / "teacher")  # loads: its config is intact


def test_a_failed_save_keeps_the_previous_checkpoint(model, tmp_path, monkeypatch):
    pruned = copy.deepcopy(model)
    plan = pk.prune(pruned, X, pk.FilterPruning(0.5)).plan
    pk.save(pruned, tmp_path / "ckpt", plan)
    before = {p.name: p.read_bytes() for p in (tmp_path / "ckpt").iterdir()}

    def disk_full(*args, **kwargs):
        raise OSError(28, "No space left on device")

    again = copy.deepcopy(model)
    other = pk.prune(again, X, pk.FilterPruning(0.25)).plan
    monkeypatch.setattr(io, "save_model", disk_full)
    with pytest.raises(pk.PlanError, match="No space left on device; nothing was changed"):
        pk.save(again, tmp_path / "ckpt", other)
    assert {p.name: p.read_bytes() for p in (tmp_path / "ckpt").iterdir()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt"]  # no staging left behind
    monkeypatch.undo()
    pk.load(copy.deepcopy(model), tmp_path / "ckpt")


def test_save_refuses_a_model_the_plan_did_not_prune(model, tmp_path):
    plan = pk.prune(copy.deepcopy(model), X, pk.FilterPruning(0.5)).plan
    with pytest.raises(pk.PlanError, match="does not match the plan"):
        pk.save(model, tmp_path / "ckpt", plan)
    assert not (tmp_path / "ckpt").exists()


def test_save_refuses_a_folder_holding_other_files(model, tmp_path):
    pruned = copy.deepcopy(model)
    plan = pk.prune(pruned, X, pk.FilterPruning(0.5)).plan
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(pk.PlanError, match="holds other files"):
        pk.save(pruned, tmp_path, plan)
    assert (tmp_path / "notes.txt").read_text() == "mine"


def _edited(tmp_path, model, edit):
    pruned = copy.deepcopy(model)
    plan = pk.prune(pruned, X, pk.FilterPruning(0.5)).plan
    pk.save(pruned, tmp_path / "ckpt", plan)
    data = json.loads((tmp_path / "ckpt" / "plan.json").read_text())
    edit(data)
    (tmp_path / "ckpt" / "plan.json").write_text(json.dumps(data))
    return tmp_path / "ckpt"


def _set_attribute(attribute, value):
    def edit(data):
        data["attributes"]["0.0.0"] = {attribute: value}
    return edit


def _float_index(data):
    name = next(iter(data["tensors"]))
    dim = next(iter(data["tensors"][name]))
    data["tensors"][name][dim][0] = 0.5


def _wrong_late_shape(data):  # the last tensor keeps one index too many
    name = list(data["tensors"])[-1]
    dim = next(iter(data["tensors"][name]))
    kept = data["tensors"][name][dim]
    data["tensors"][name][dim] = sorted(set(range(data["shapes"][name][int(dim)])) - {0}
                                        if len(kept) < data["shapes"][name][int(dim)] - 1
                                        else kept[:-1])


@pytest.mark.parametrize("edit, message", [
    (_set_attribute("stride", 2), "not a channel count"),
    (_set_attribute("__dict__", {}), "not a channel count"),
    (_set_attribute("out_channels", 1000), "must be a whole number from 1"),
    (_float_index, "not a whole number"),
    (_wrong_late_shape, "shape"),
], ids=["stride", "__dict__", "larger count", "float index", "late shape mismatch"])
def test_an_edited_plan_is_refused_and_the_target_untouched(model, tmp_path, edit, message):
    directory = _edited(tmp_path, model, edit)
    target = copy.deepcopy(model)
    snapshot, text = state(target), repr(target)
    with pytest.raises(pk.PlanError, match=message):
        pk.load(target, directory)
    assert_unchanged(target, snapshot, text)


def test_load_checks_before_it_touches_tensors(model, tmp_path):
    """A weights file whose last tensor does not fit: no tensor of the target is written."""
    pruned = copy.deepcopy(model)
    plan = pk.prune(pruned, X, pk.FilterPruning(0.5)).plan
    pk.save(pruned, tmp_path / "ckpt", plan)
    from safetensors.torch import load_file, save_file
    weights = load_file(tmp_path / "ckpt" / "model.safetensors")
    last = sorted(weights)[-1]
    weights[last] = torch.zeros(*[n + 1 for n in weights[last].shape])
    save_file(weights, tmp_path / "ckpt" / "model.safetensors")
    target = copy.deepcopy(model)
    pointers = {name: p.data_ptr() for name, p in target.state_dict().items()}
    snapshot, text = state(target), repr(target)
    with pytest.raises(pk.PlanError, match="has shape"):
        pk.load(target, tmp_path / "ckpt")
    assert_unchanged(target, snapshot, text)
    assert {name: p.data_ptr() for name, p in target.state_dict().items()} == pointers


