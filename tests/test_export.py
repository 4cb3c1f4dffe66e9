"""Deployment formats, checked: ONNX and torch.export files run back and compared."""

import numpy as np
import onnxruntime
import pytest
import torch
from torch import nn
from typer.testing import CliRunner

import prunekit as pk
from prunekit.cli.app import console as cli_console
from prunekit.cli.commands import app as cli_app
from prunekit.errors import ConfigError
from prunekit.export import formats as export_module
from prunekit.export.checked import ExportError, fresh_like

from .helpers import outputs


def pruned_cnn() -> tuple[nn.Module, torch.Tensor]:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 16, 3), nn.BatchNorm2d(16), nn.ReLU(),
                          nn.Conv2d(16, 32, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                          nn.Flatten(), nn.Linear(32, 10)).eval()
    x = torch.randn(2, 3, 16, 16)
    pk.prune(model, x, pk.FilterPruning(0.5))
    return model, x


def test_an_onnx_export_is_checked_in_onnx_runtime_on_fresh_inputs(tmp_path):
    model, x = pruned_cnn()
    report = pk.export(model, x, tmp_path / "model.onnx")
    assert report.format == "onnx" and report.exporter == "dynamo"
    assert report.largest_difference <= 1e-5 and report.outputs == 1
    assert "2 fresh inputs" in report.checked_on and "ONNX Runtime" in str(report)
    # the file computes what the model computes, on inputs the check did not see
    session = onnxruntime.InferenceSession(str(tmp_path / "model.onnx"),
                                           providers=["CPUExecutionProvider"])
    other = torch.randn(2, 3, 16, 16)
    got = session.run(None, {session.get_inputs()[0].name: other.numpy()})[0]
    np.testing.assert_allclose(got, outputs(model, other)[0].numpy(), rtol=1e-4, atol=1e-5)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.onnx"]


def test_a_torch_export_program_is_loaded_back_and_compared(tmp_path):
    model, x = pruned_cnn()
    report = pk.export(model, x, tmp_path / "model.pt2")
    assert report.format == "torch.export" and report.largest_difference <= 1e-6
    program = torch.export.load(str(tmp_path / "model.pt2")).module()
    torch.testing.assert_close(program(x), outputs(model, x)[0])


def test_pruned_attention_heads_export_with_dict_inputs(tmp_path):
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    config = transformers.BertConfig(hidden_size=64, num_attention_heads=4,
                                     intermediate_size=128, num_hidden_layers=2,
                                     vocab_size=100)
    model = transformers.BertModel(config).eval()
    tokens = {"input_ids": torch.randint(0, 100, (2, 12)),
              "attention_mask": torch.ones(2, 12, dtype=torch.long)}
    pk.prune(model, tokens, pk.HeadPruning(0.5))
    assert model.encoder.layer[0].attention.self.num_attention_heads == 2
    report = pk.export(model, tokens, tmp_path / "bert.onnx")
    assert report.outputs == 2 and report.largest_difference <= 1e-4


def test_a_failed_check_leaves_the_file_that_was_there(tmp_path, monkeypatch):
    model, x = pruned_cnn()
    target = tmp_path / "model.onnx"
    target.write_bytes(b"the user's earlier file")
    real_runner = export_module.onnx_runner

    def off_by_one(path):
        run = real_runner(path)
        return lambda inputs: [t + 1 for t in run(inputs)]

    monkeypatch.setattr(export_module, "onnx_runner", off_by_one)
    with pytest.raises(ExportError, match="dynamo: largest difference .*; torchscript: "
                                          "largest difference"):
        pk.export(model, x, target)
    assert target.read_bytes() == b"the user's earlier file"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.onnx"]  # no scratch left


def test_the_torchscript_exporter_is_the_fallback_and_the_report_says_why(tmp_path,
                                                                         monkeypatch):
    model, x = pruned_cnn()
    real_export = torch.onnx.export

    def no_dynamo(*args, dynamo=False, **kwargs):
        if dynamo:
            raise RuntimeError("unsupported op for this test")
        return real_export(*args, dynamo=False, **kwargs)

    monkeypatch.setattr(torch.onnx, "export", no_dynamo)
    report = pk.export(model, x, tmp_path / "model.onnx")
    assert report.exporter == "torchscript"
    assert "RuntimeError: unsupported op for this test" in report.fallback_reason
    assert report.largest_difference <= 1e-5


def test_a_dynamo_file_that_onnx_runtime_cannot_load_falls_back_too(tmp_path, monkeypatch):
    model, x = pruned_cnn()
    real_runner = export_module.onnx_runner
    calls = []

    def refuse_the_first(path):
        calls.append(path)
        if len(calls) == 1:
            raise RuntimeError("[ONNXRuntimeError] ShapeInferenceError for this test")
        return real_runner(path)

    monkeypatch.setattr(export_module, "onnx_runner", refuse_the_first)
    report = pk.export(model, x, tmp_path / "model.onnx")
    assert report.exporter == "torchscript" and "ShapeInferenceError" in report.fallback_reason


def test_int8_quantization_is_written_beside_and_its_difference_reported(tmp_path):
    model, x = pruned_cnn()
    report = pk.export(model, x, tmp_path / "model.onnx", quantize="int8")
    assert report.quantized_path == tmp_path / "model.int8.onnx"
    assert report.quantized_path.stat().st_size < (tmp_path / "model.onnx").stat().st_size
    assert 0 < report.quantized_difference < 0.5  # int8 moves outputs, a little


@pytest.mark.parametrize("kwargs, message", [
    ({"path": "model.onnx", "example": torch.randn(1, 5, 16, 16)},
     "example_inputs: the model does not run on them \\(RuntimeError"),
    ({"path": "model.tflite"}, "name it \\*.onnx or \\*.pt2"),
    ({"path": "model.pt2", "quantize": "int8"}, "export to a .onnx path"),
    ({"path": "model.onnx", "quantize": "int4"}, "quantize='int4'"),
    ({"path": "missing/model.onnx"}, "its folder does not exist"),
    ({"path": "model.bin", "format": "tflite"}, "format='tflite'"),
    ({"path": "model.onnx", "tolerance": -1}, "tolerance must be a number >= 0"),
    ({"path": "model.onnx", "fresh_inputs": -1}, "fresh_inputs must be a whole number"),
])
def test_bad_export_arguments_are_one_clear_error(tmp_path, kwargs, message):
    model, x = pruned_cnn()
    x = kwargs.get("example", x)
    kwargs = {**{k: v for k, v in kwargs.items() if k != "example"},
              "path": tmp_path / kwargs["path"]}
    with pytest.raises(ConfigError, match=message):
        pk.export(model, x, **kwargs)
    assert list(tmp_path.iterdir()) == []


def test_fresh_inputs_keep_shapes_dtypes_and_token_ranges():
    tokens = {"input_ids": torch.randint(5, 50, (2, 8)),
              "attention_mask": torch.ones(2, 8, dtype=torch.long)}
    fresh = fresh_like(tokens, seed=1)
    assert fresh["input_ids"].dtype == torch.long and fresh["input_ids"].shape == (2, 8)
    assert 5 <= int(fresh["input_ids"].min()) and int(fresh["input_ids"].max()) < 50
    assert not torch.equal(fresh["input_ids"], tokens["input_ids"])
    assert torch.equal(fresh["attention_mask"], tokens["attention_mask"])
    image = torch.randn(1, 3, 4, 4)
    assert not torch.equal(fresh_like(image, 0), image)


def test_the_command_line_exports_what_prune_wrote(tmp_path, monkeypatch):
    monkeypatch.setattr(cli_console, "width", 300)
    runner = CliRunner()
    pruned = tmp_path / "pruned"
    result = runner.invoke(cli_app, ["prune", "--model", "torchvision:resnet18", "--input-shape",
                                     "1,3,32,32", "--no-latency", "--out", str(pruned)])
    assert result.exit_code == 0, result.output
    result = runner.invoke(cli_app, ["export", "--model", "torchvision:resnet18", "--pruned",
                                     str(pruned), "--input-shape", "1,3,32,32", "--int8",
                                     "--out", str(tmp_path / "r18.onnx")])
    assert result.exit_code == 0, result.output
    assert "checked: onnx (dynamo exporter)" in result.output
    session = onnxruntime.InferenceSession(str(tmp_path / "r18.onnx"),
                                           providers=["CPUExecutionProvider"])
    # the pruned widths: the first conv kept half of its 64 filters
    weights = {i.name: i for i in session.get_inputs()}
    assert list(weights) and (tmp_path / "r18.int8.onnx").is_file()
    fresh = pk.load(__import__("torchvision").models.resnet18().eval(), pruned)
    x = torch.randn(1, 3, 32, 32)
    got = session.run(None, {session.get_inputs()[0].name: x.numpy()})[0]
    np.testing.assert_allclose(got, outputs(fresh, x)[0].numpy(), rtol=1e-3, atol=1e-4)


@pytest.mark.parametrize("args, message", [
    (["--out", "OUT/r.tflite"], "error: --out '.*r.tflite': name it \\*.onnx or \\*.pt2"),
    (["--out", "OUT/r.pt2", "--int8"], "error: --int8 is ONNX Runtime's quantizer"),
    (["--out", "OUT/none/r.onnx"], "error: --out '.*': the folder .* does not exist"),
    (["--out", "OUT/r.onnx", "--pruned", "OUT"], "error: --pruned '.*': no plan.json there"),
    (["--out", "OUT/r.onnx", "--tolerance", "-1"], "error: --tolerance -1.0: give a fraction"),
    (["--out", "OUT/r.onnx", "--input-shape", "1,5,32,32"],
     "error: the model does not run on the example inputs \\(--input-shape"),
])
def test_export_mistakes_are_one_line_naming_the_option(tmp_path, args, message):
    import re

    args = [a.replace("OUT", str(tmp_path)) for a in args]
    result = CliRunner().invoke(cli_app, ["export", "--model", "torchvision:resnet18",
                                          "--input-shape", "1,3,32,32", *args])
    assert result.exit_code == 2, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and re.search(message, lines[0]), lines
    assert list(tmp_path.iterdir()) == []


def test_the_report_counts_convolutions_onnx_runtime_runs_slowly(tmp_path):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 6, 3), nn.ReLU(), nn.Conv2d(6, 16, 3)).eval()
    report = pk.export(model, torch.randn(1, 3, 12, 12), tmp_path / "odd.onnx")
    assert report.odd_widths == 1
    assert "1 convolution has a width that is not a multiple of 8" in str(report)
    assert "round_to=8" in str(report)


def test_a_causal_language_model_exports_without_its_cache(tmp_path):
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    config = transformers.LlamaConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                      num_attention_heads=4, num_key_value_heads=2,
                                      vocab_size=50)
    model = transformers.LlamaForCausalLM(config).eval()
    tokens = {"input_ids": torch.randint(0, 50, (1, 8))}
    report = pk.export(model, tokens, tmp_path / "llama.onnx")
    assert report.exporter == "dynamo" and report.outputs == 1  # the logits, no cache
    assert "use_cache" not in tokens  # the caller's inputs are not changed


@pytest.mark.parametrize("suffix", [".onnx", ".pt2"])
def test_a_free_batch_dim_is_checked_on_another_batch_size(tmp_path, suffix):
    model, _ = pruned_cnn()
    one = torch.randn(1, 3, 16, 16)  # batch 1 cannot be traced free: a batch of 2 is
    report = pk.export(model, one, tmp_path / f"model{suffix}", dynamic_batch=True)
    assert report.dynamic_batch and "a batch of 3 (the batch dim is free)" in report.checked_on
    five = torch.randn(5, 3, 16, 16)
    if suffix == ".onnx":
        session = onnxruntime.InferenceSession(str(report.path),
                                               providers=["CPUExecutionProvider"])
        got = torch.from_numpy(session.run(None, {session.get_inputs()[0].name: five.numpy()})[0])
    else:
        got = torch.export.load(str(report.path)).module()(five)
    torch.testing.assert_close(got, outputs(model, five)[0], rtol=1e-4, atol=1e-5)


def test_fresh_inputs_of_another_batch_keep_masks_and_other_dims():
    tokens = {"input_ids": torch.randint(5, 50, (2, 8)),
              "attention_mask": torch.ones(2, 8, dtype=torch.bool)}
    fresh = fresh_like(tokens, seed=0, batch=5)
    assert fresh["input_ids"].shape == (5, 8) and fresh["attention_mask"].shape == (5, 8)
    assert fresh["attention_mask"].all()
