"""Promise: "the command line saves a model that reloads and computes what was pruned".

Attacks: a Hugging Face folder with a task head, head counts no config can describe, an
output folder inside its own source, a sensitivity run whose write fails, BatchNorm
statistics that no longer fit."""

from __future__ import annotations

import copy

import pytest
import torch
import transformers
from typer.testing import CliRunner

import prunekit as pk
from prunekit.cli.commands import app
from prunekit.cli.sources import load_model

runner = CliRunner()


def tiny_llama(heads: int = 8) -> transformers.LlamaForCausalLM:
    torch.manual_seed(0)
    config = transformers.LlamaConfig(vocab_size=64, hidden_size=128, intermediate_size=64,
                                      num_hidden_layers=2, num_attention_heads=heads,
                                      num_key_value_heads=heads, tie_word_embeddings=False)
    return transformers.LlamaForCausalLM(config).eval()


def test_an_hf_folder_loads_with_its_task_head(tmp_path):
    model = tiny_llama()
    model.save_pretrained(tmp_path / "llama")
    loaded = load_model(f"hf:{tmp_path / 'llama'}").eval()
    assert type(loaded) is transformers.LlamaForCausalLM
    ids = torch.randint(0, 64, (1, 6))
    with torch.no_grad():
        assert torch.equal(loaded(ids).logits, model(ids).logits)


def test_a_classifier_keeps_its_classifier(tmp_path):
    config = transformers.BertConfig(vocab_size=50, hidden_size=32, num_hidden_layers=1,
                                     num_attention_heads=2, intermediate_size=32,
                                     num_labels=3)
    transformers.BertForSequenceClassification(config).save_pretrained(tmp_path / "bert")
    loaded = load_model(f"hf:{tmp_path / 'bert'}")
    assert type(loaded) is transformers.BertForSequenceClassification


def test_head_counts_no_config_can_describe_are_saved_with_the_plan(tmp_path):
    """6 of 8 heads of 16 in a hidden size of 128: transformers refuses that config, so the
    command must not promise save_pretrained, and must not end in a traceback."""
    model = copy.deepcopy(tiny_llama())
    result = pk.prune(model, {"input_ids": torch.randint(0, 64, (2, 8))},
                      pk.HeadPruning(0.25))
    assert model.model.layers[0].self_attn.q_proj.out_features == 96
    assert result.config_matches is False
    tiny_llama().save_pretrained(tmp_path / "llama")
    out = tmp_path / "pruned"
    cli = runner.invoke(app, ["prune", "--model", f"hf:{tmp_path / 'llama'}", "--method",
                              "heads", "--ratio", "0.25", "--no-latency", "--out", str(out)])
    assert cli.exit_code == 0, cli.output
    assert not (out / "hf").exists()
    reloaded = pk.load(tiny_llama(), out)
    assert reloaded.model.layers[0].self_attn.q_proj.out_features == 96


def test_a_config_that_matches_reloads_with_from_pretrained(tmp_path):
    model = tiny_llama()
    result = pk.prune(model, {"input_ids": torch.randint(0, 64, (2, 8))}, pk.HeadPruning(0.5))
    assert result.config_matches is True
    model.save_pretrained(tmp_path / "pruned")
    again = transformers.LlamaForCausalLM.from_pretrained(tmp_path / "pruned").eval()
    ids = torch.randint(0, 64, (1, 5))
    with torch.no_grad():
        assert torch.equal(again(ids).logits, model(ids).logits)


def test_an_output_folder_inside_its_source_does_not_copy_the_last_result(tmp_path):
    source = tmp_path / "llama"
    tiny_llama().save_pretrained(source)
    (source / "tokenizer_config.json").write_text("{}")
    args = ["prune", "--model", f"hf:{source}", "--method", "filter", "--ratio", "0.25",
            "--no-latency", "--out", str(source / "pruned")]
    for _ in range(2):
        result = runner.invoke(app, args)
        assert result.exit_code == 0, result.output
    written = sorted(p.relative_to(source / "pruned").as_posix()
                     for p in (source / "pruned").rglob("*") if p.is_file())
    assert not any(name.startswith(("hf/pruned", "tokenizer/pruned")) for name in written)


def test_sensitivity_writes_its_folder_whole_or_not_at_all(tmp_path, monkeypatch):
    out = tmp_path / "sens"
    args = ["sensitivity", "--model", "torchvision:resnet18", "--data",
            "prunekit.cli.data:digits_loaders", "--ratios", "0.5", "--out", str(out)]
    pytest.importorskip("sklearn")
    from prunekit.workflows import sensitivity as module

    def broken_plot(self, path):
        raise OSError("disk full")

    monkeypatch.setattr(module.Sensitivity, "plot", broken_plot)
    monkeypatch.setattr(module, "sensitivity", _quick_sensitivity)
    result = runner.invoke(app, args)
    assert result.exit_code == 2 and "disk full" in result.output
    assert not out.exists() and list(tmp_path.iterdir()) == []


def _quick_sensitivity(*args, **kwargs):
    from prunekit.workflows.sensitivity import Sensitivity, SensitivityRow

    return Sensitivity(0.9, [SensitivityRow("conv1", 64, 0.5, 0.5)], recalibrated=True)


def test_sensitivity_re_estimates_batchnorm_statistics_and_leaves_the_model_alone():
    from prunekit.workflows.sensitivity import sensitivity

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.BatchNorm2d(8),
                                torch.nn.ReLU(), torch.nn.Conv2d(8, 8, 3),
                                torch.nn.BatchNorm2d(8), torch.nn.ReLU(),
                                torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(),
                                torch.nn.Linear(8, 2)).eval()
    x = torch.randn(16, 3, 8, 8) * 3 + 1
    state = {k: v.clone() for k, v in model.state_dict().items()}
    seen = []

    def evaluate(candidate):
        seen.append(candidate[4].running_mean.clone())
        return 1.0

    table = sensitivity(model, x, ratios=(0.5,), evaluate=evaluate, data=[x])
    assert table.recalibrated and "re-estimated" in table.to_markdown()
    assert any(not torch.equal(m, state["4.running_mean"]) for m in seen[1:])
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())
    plain = sensitivity(model, x, ratios=(0.5,), evaluate=lambda m: 1.0)
    assert not plain.recalibrated and "NOT re-estimated" in plain.to_markdown()


def test_in_memory_and_streamed_pruning_agree_through_the_command_line(tmp_path):
    tiny_llama().save_pretrained(tmp_path / "llama")
    outs = {}
    for way, extra in (("memory", []), ("stream", ["--stream"])):
        outs[way] = tmp_path / way
        result = runner.invoke(app, ["prune", "--model", f"hf:{tmp_path / 'llama'}",
                                     "--method", "filter", "--ratio", "0.5", "--no-latency",
                                     "--out", str(outs[way]), *extra])
        assert result.exit_code == 0, result.output
    memory = transformers.LlamaForCausalLM.from_pretrained(outs["memory"] / "hf").eval()
    streamed = transformers.LlamaForCausalLM.from_pretrained(outs["stream"]).eval()
    ids = torch.randint(0, 64, (1, 7))
    with torch.no_grad():
        assert torch.allclose(memory(ids).logits, streamed(ids).logits, atol=1e-5)


def test_a_checkpoint_pickle_that_runs_code_runs_nothing(tmp_path):
    import os

    class RunsCode:
        def __reduce__(self):
            return (os.system, (f"touch {tmp_path / 'ran'}",))

    torch.save({"state_dict": RunsCode()}, tmp_path / "weights.pt")
    result = runner.invoke(app, ["prune", "--model", "torchvision:resnet18", "--checkpoint",
                                 str(tmp_path / "weights.pt"), "--out", str(tmp_path / "o")])
    assert result.exit_code == 2 and "cannot be read as a state dict" in result.output
    assert not (tmp_path / "ran").exists() and not (tmp_path / "o").exists()


def test_export_of_a_damaged_pruned_folder_is_one_line(tmp_path):
    out = tmp_path / "pruned"
    result = runner.invoke(app, ["prune", "--model", "torchvision:resnet18", "--input-shape",
                                 "1,3,32,32", "--no-latency", "--out", str(out)])
    assert result.exit_code == 0, result.output
    weights = out / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:4096])
    result = runner.invoke(app, ["export", "--model", "torchvision:resnet18", "--pruned",
                                 str(out), "--input-shape", "1,3,32,32", "--out",
                                 str(tmp_path / "m.onnx")])
    assert result.exit_code == 2
    assert "not a readable safetensors file" in result.output
    assert not (tmp_path / "m.onnx").exists()
