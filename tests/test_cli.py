"""The command line: prune, analyze, and what a bad argument prints."""

import pytest
import torch
from typer.testing import CliRunner

import prunekit as pk
from prunekit import cli
from prunekit.cli import app

from .helpers import outputs

runner = CliRunner()
MODEL_FILE = '''
from torch import nn

def small_cnn():
    return nn.Sequential(nn.Conv2d(3, 16, 3), nn.BatchNorm2d(16), nn.ReLU(),
                         nn.Conv2d(16, 32, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                         nn.Flatten(), nn.Linear(32, 4))
'''


def test_prune_from_a_python_file_saves_a_loadable_model(tmp_path):
    source = tmp_path / "net.py"
    source.write_text(MODEL_FILE)
    out = tmp_path / "pruned"
    result = runner.invoke(app, ["prune", "--model", f"{source}:small_cnn", "--input-shape",
                                 "1,3,16,16", "--method", "channel", "--ratio", "0.5",
                                 "--criterion", "l2", "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "equivalent" in result.output and "after" in result.output
    namespace: dict = {}
    exec(MODEL_FILE, namespace)
    model = pk.load(out, namespace["small_cnn"]().eval())
    assert model[0].out_channels == 8 and model[3].out_channels == 16
    assert outputs(model, torch.randn(1, 3, 16, 16))[0].shape == (1, 4)


def test_prune_torchvision_model(tmp_path):
    result = runner.invoke(app, ["prune", "--model", "torchvision:resnet18", "--input-shape",
                                 "1,3,32,32", "--ratio", "0.5", "--out", str(tmp_path / "r18")])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "r18" / "model.safetensors").is_file()
    assert (tmp_path / "r18" / "plan.json").is_file()


def test_analyze_lists_groups(monkeypatch):
    monkeypatch.setattr(cli.console, "width", 400)  # no wrapping inside table cells
    result = runner.invoke(app, ["analyze", "--model", "torchvision:resnet18", "--input-shape",
                                 "1,3,32,32"])
    assert result.exit_code == 0, result.output
    assert "prunable groups" in result.output and "conv1.weight[out]" in result.output


def test_bad_ratio_is_a_clear_error(tmp_path):
    result = runner.invoke(app, ["prune", "--model", "torchvision:resnet18", "--ratio", "1.5",
                                 "--out", str(tmp_path / "x")])
    assert result.exit_code == 1
    assert "ratio must be a number in [0, 1)" in result.output
    assert not (tmp_path / "x").exists()


def test_bad_input_shape_is_a_clear_error(tmp_path):
    result = runner.invoke(app, ["prune", "--model", "torchvision:resnet18", "--input-shape",
                                 "1,3,x", "--out", str(tmp_path / "x")])
    assert result.exit_code != 0
    assert "comma-separated integers" in result.output


def test_compare_writes_every_method_at_the_budget(tmp_path):
    import json

    result = runner.invoke(app, ["compare", "--epochs", "1", "--finetune-epochs", "0",
                                 "--flops-target", "0.4", "--out", str(tmp_path)])
    assert result.exit_code == 0, result.output
    saved = json.loads((tmp_path / "results.json").read_text())
    labels = [row["method"] for row in saved["rows"]]
    assert labels[0] == "unpruned" and "channel (l2) + reconstruction" in labels
    base = saved["rows"][0]["flops"]
    for row in saved["rows"][1:]:
        if row["method"].startswith(("filter", "channel")):
            assert abs(1 - row["flops"] / base - 0.4) <= 0.02, row
    assert (tmp_path / "comparison.png").stat().st_size > 1000


def _llama_directory(tmp_path):
    import transformers

    torch.manual_seed(0)
    config = transformers.LlamaConfig(hidden_size=64, num_attention_heads=4, num_key_value_heads=2,
                                      intermediate_size=128, num_hidden_layers=3, vocab_size=100)
    transformers.LlamaModel(config).save_pretrained(tmp_path / "llama")
    return tmp_path / "llama"


@pytest.mark.parametrize("method, options, field, value", [
    ("heads", ["--ratio", "0.5"], "num_key_value_heads", 1),
    ("filter", ["--ratio", "0.5"], "intermediate_size", 64),
    ("layers", ["--n", "2", "--criterion", "angular"], "num_hidden_layers", 1),
])
def test_prune_a_hugging_face_directory(tmp_path, method, options, field, value):
    import transformers

    source = _llama_directory(tmp_path)
    out = tmp_path / "pruned"
    result = runner.invoke(app, ["prune", "--model", f"hf:{source}", "--method", method,
                                 *options, "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "equivalent" in result.output
    reloaded = transformers.AutoModel.from_pretrained(out / "hf")
    assert getattr(reloaded.config, field) == value
    restored = pk.load(out, transformers.AutoModel.from_pretrained(source))
    ids = {"input_ids": torch.randint(0, 100, (1, 6))}
    for a, b in zip(outputs(reloaded, ids), outputs(restored, ids)):
        assert torch.equal(a, b)


def test_a_directory_without_a_config_is_a_clear_error(tmp_path):
    result = runner.invoke(app, ["prune", "--model", f"hf:{tmp_path}", "--method", "heads",
                                 "--out", str(tmp_path / "x")])
    assert result.exit_code != 0
    assert "no config.json" in result.output
