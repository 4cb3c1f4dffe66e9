"""Promise: "streamed pruning reads a checkpoint it can trust and writes its output whole",
and "a save is whole or not at all, the earlier checkpoint kept".

Attacks: a shard cut short, an index naming a file outside the folder, an interrupt at
each step of a save, a disk that refuses, an interrupt while weights load."""

from __future__ import annotations

import json

import pytest
import torch
import transformers
from safetensors.torch import load_file, save_file

import prunekit as pk
from prunekit.export import saving as io

from ..zoo import resnet_basic

X = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(0))


@pytest.fixture
def llama_folder(tmp_path):
    torch.manual_seed(0)
    config = transformers.LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64,
                                      num_hidden_layers=2, num_attention_heads=4,
                                      num_key_value_heads=4)
    transformers.LlamaForCausalLM(config).save_pretrained(tmp_path / "llama")
    return tmp_path / "llama"


def test_a_streamed_shard_cut_short_is_one_line_and_writes_nothing(llama_folder, tmp_path):
    weights = llama_folder / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    with pytest.raises(pk.ConfigError, match="not a readable safetensors file"):
        pk.prune_streamed(llama_folder, tmp_path / "out", pk.FilterPruning(0.5))
    assert not (tmp_path / "out").exists()


def test_a_streamed_index_cannot_reach_outside_its_folder(llama_folder, tmp_path):
    tensors = load_file(str(llama_folder / "model.safetensors"))
    (llama_folder / "model.safetensors").unlink()
    save_file(tensors, str(tmp_path / "elsewhere.safetensors"))
    (llama_folder / "model.safetensors.index.json").write_text(json.dumps(
        {"weight_map": {name: "../elsewhere.safetensors" for name in tensors}}))
    with pytest.raises(pk.ConfigError, match="not a file name inside its folder"):
        pk.prune_streamed(llama_folder, tmp_path / "out", pk.FilterPruning(0.5))


@pytest.fixture
def pruned():
    model = resnet_basic().eval()
    result = pk.prune(model, X, pk.FilterPruning(0.5))
    return model, result.plan


@pytest.mark.parametrize("step", ["weights", "plan", "swap"])
def test_an_interrupt_at_each_step_of_a_save_keeps_the_earlier_checkpoint(
        tmp_path, monkeypatch, pruned, step):
    model, plan = pruned
    pk.save(model, tmp_path / "ckpt", plan)
    before = {p.name: p.read_bytes() for p in (tmp_path / "ckpt").iterdir()}

    def interrupt(*args, **kwargs):
        raise KeyboardInterrupt

    if step == "weights":
        monkeypatch.setattr(io, "save_model", interrupt)
    elif step == "plan":
        monkeypatch.setattr(pk.Plan, "save", interrupt)
    else:
        real = io.os.replace
        calls = []

        def replace_then_interrupt(source, target):  # after the old folder moved aside
            calls.append(source)
            if len(calls) == 2:
                raise KeyboardInterrupt
            return real(source, target)

        monkeypatch.setattr(io.os, "replace", replace_then_interrupt)
    with pytest.raises(KeyboardInterrupt):
        pk.save(model, tmp_path / "ckpt", plan)
    monkeypatch.undo()
    assert {p.name: p.read_bytes() for p in (tmp_path / "ckpt").iterdir()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt"]


def test_a_save_the_disk_refuses_is_one_line(tmp_path, pruned):
    model, plan = pruned
    (tmp_path / "file").write_text("x")
    with pytest.raises(pk.PlanError, match="cannot save to .*nothing was changed"):
        pk.save(model, tmp_path / "file" / "ckpt", plan)


def test_an_interrupt_while_weights_load_leaves_the_fresh_model_alone(
        tmp_path, monkeypatch, pruned):
    model, plan = pruned
    pk.save(model, tmp_path / "ckpt", plan)
    fresh = resnet_basic()
    before = {k: v.clone() for k, v in fresh.state_dict().items()}
    text = repr(fresh)

    def interrupt(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(io, "load_model", interrupt)
    with pytest.raises(KeyboardInterrupt):
        pk.load(fresh, tmp_path / "ckpt")
    assert repr(fresh) == text
    assert all(torch.equal(v, before[k]) for k, v in fresh.state_dict().items())
