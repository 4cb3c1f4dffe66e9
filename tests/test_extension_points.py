"""Adding a criterion (that streams), a method, a model source or an export format is one file
and one registration each, from outside the package: the plugin below is written to a folder
of its own, imported from there, and then used through every path that should see it
(``pk.prune``, ``pk.prune_streamed``, ``pk.export`` and the command line)."""

import importlib.util
import json
import subprocess
import sys
import textwrap

import pytest
import torch
from torch import nn

import prunekit as pk
from prunekit.cli import model_sources
from prunekit.cli.commands import main
from prunekit.cli.model_sources import model_help
from prunekit.export import formats
from prunekit.importance import registry
from prunekit.methods.base import METHODS

PLUGIN = textwrap.dedent('''
    """A library's prunekit plugin: everything it adds, each added by one call."""
    from dataclasses import dataclass

    import torch
    from torch import nn

    import prunekit as pk


    class LargestWeight(pk.WeightCriterion):
        """Each channel's largest weight magnitude."""

        def score(self, views, generator):
            return torch.stack([v.matrix.abs().amax(dim=1) for v in views]).amax(dim=0)


    # a block alone computes it as the whole model does: it may stream
    pk.register_criterion("largest", LargestWeight(), scores=("channels", "heads"),
                          streams=True)


    @dataclass
    class WideFirst(pk.FilterPruning):
        """Filter pruning that spares the narrowest groups (fewer than 16 channels)."""

        cli_name = "wide_first"  # its command-line name: subclassing registers it

        def candidates(self, graph):
            return [g for g in super().candidates(graph) if g.size >= 16]


    def tiny(name, option, trust_pickle):
        widths = {"cnn": 16, "wide": 32}
        if name not in widths:
            raise pk.ConfigError(f"{option}: no tiny model {name!r}; choose cnn or wide")
        torch.manual_seed(0)
        width = widths[name]
        return nn.Sequential(nn.Conv2d(3, width, 3, padding=1), nn.ReLU(),
                             nn.Conv2d(width, 8, 3, padding=1), nn.ReLU(),
                             nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 4))


    pk.register_model_source("tiny", tiny, example="tiny:cnn")


    def write_program(model, example_inputs, path, dynamic_batch):
        """A torch.export program, its file named *.ep."""
        args = example_inputs if isinstance(example_inputs, tuple) else (example_inputs,)
        torch.export.save(torch.export.export(model, args), str(path))
        program = torch.export.load(str(path)).module()

        def run(inputs):
            inputs = inputs if isinstance(inputs, tuple) else (inputs,)
            return [program(*inputs).detach().float()]

        return run


    pk.register_export_format("program", ".ep", {"torch.export": write_program},
                              checked_in="torch.export.load")
''')


@pytest.fixture(scope="module")
def plugin(tmp_path_factory):
    folder = tmp_path_factory.mktemp("plugin")
    (folder / "prunekit_plugin.py").write_text(PLUGIN)
    spec = importlib.util.spec_from_file_location("prunekit_plugin", folder / "prunekit_plugin.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    yield module
    # what the plugin registered goes again, so no other test sees it
    for key in [k for k in registry._REGISTRY if k[1] in ("largest", "largest_local")]:
        del registry._REGISTRY[key]
    METHODS.pop("WideFirst", None)
    model_sources._SOURCES.pop("tiny", None)
    for name in ("program", "wrong"):
        formats._FORMATS.pop(name, None)


def test_a_criterion_from_outside_prunes_in_memory(plugin):
    model = plugin.tiny("wide", "", False).eval()
    x = torch.randn(2, 3, 8, 8)
    conv = model[0]
    largest = torch.maximum(conv.weight.detach().abs().flatten(1).amax(1), conv.bias.abs())
    result = pk.prune(model, x, pk.FilterPruning(0.5, criterion="largest"))
    assert result.report.ok and model[0].out_channels == 16
    kept = result.plan.tensors["0.weight"][0]
    assert sorted(kept) == sorted(largest.topk(16).indices.tolist())  # the largest half
    assert "largest" in pk.criterion_names("channels")


def test_a_criterion_that_says_it_streams_streams_as_pk_prune_prunes(plugin, tmp_path):
    transformers = pytest.importorskip("transformers")
    config = transformers.LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64,
                                      num_hidden_layers=2, num_attention_heads=4,
                                      num_key_value_heads=2, max_position_embeddings=32)
    torch.manual_seed(0)
    model = transformers.LlamaForCausalLM(config).eval()
    model.save_pretrained(tmp_path / "source")
    method = pk.ChannelPruning(0.5, criterion="largest")
    streamed = pk.prune_streamed(tmp_path / "source", tmp_path / "out", method)
    ids = {"input_ids": torch.arange(16).reshape(1, 16) % 64}
    in_memory = pk.prune(model, ids, method).plan
    assert streamed.plan.tensors == in_memory.tensors


def test_a_criterion_that_does_not_stream_is_refused_by_streaming(plugin, tmp_path):
    pk.register_criterion("largest_local", plugin.LargestWeight())  # streams=False
    with pytest.raises(pk.ConfigError, match="largest_local.*choose one of .*'largest'"):
        pk.prune_streamed(tmp_path / "absent", tmp_path / "out",
                          pk.ChannelPruning(0.5, criterion="largest_local"))


def test_a_method_from_outside_is_on_the_command_line(plugin, tmp_path, capsys):
    main(["prune", "--model", "tiny:wide", "--method", "wide_first", "--input-shape",
          "1,3,8,8", "--no-latency", "--out", str(tmp_path / "out")])
    plan = json.loads((tmp_path / "out" / "plan.json").read_text())
    assert plan["method"]["method"] == "WideFirst"
    # the 32-wide group was halved; the 8-wide one is not a candidate of WideFirst
    assert plan["tensors"]["0.weight"]["0"] == plan["tensors"]["2.weight"]["1"]
    assert len(plan["tensors"]["0.weight"]["0"]) == 16 and "4.weight" not in plan["tensors"]


def test_a_model_source_from_outside_is_built_listed_and_checked(plugin, tmp_path, capsys):
    assert "tiny:cnn" in model_help()
    main(["analyze", "--model", "tiny:cnn", "--input-shape", "1,3,8,8"])
    assert "candidates" in capsys.readouterr().out
    with pytest.raises(SystemExit) as exit:
        main(["analyze", "--model", "tiny:huge", "--input-shape", "1,3,8,8"])
    assert exit.value.code == 2
    assert capsys.readouterr().err.strip() == ("error: --model 'tiny:huge': no tiny model "
                                               "'huge'; choose cnn or wide")


def test_an_export_format_from_outside_is_written_and_checked(plugin, tmp_path):
    model, x = plugin.tiny("cnn", "", False).eval(), torch.randn(1, 3, 8, 8)
    report = pk.export(model, x, tmp_path / "model.ep")
    assert report.format == "program" and (tmp_path / "model.ep").is_file()
    assert "checked in torch.export.load" in str(report) and report.largest_difference < 1e-5
    # the check can fail: a writer whose file computes something else writes nothing
    pk.register_export_format("wrong", ".wrong", {"off": lambda m, x, path, d: (
        path.write_bytes(b"x"), lambda inputs: [m(inputs).detach() + 1])[1]},
        checked_in="nothing")
    with pytest.raises(pk.PruneError, match="largest difference"):
        pk.export(model, x, tmp_path / "model.wrong")
    assert not (tmp_path / "model.wrong").exists()


def test_an_export_format_from_outside_is_on_the_command_line(plugin, tmp_path, capsys):
    main(["export", "--model", "tiny:cnn", "--input-shape", "1,3,8,8", "--out",
          str(tmp_path / "m.ep")])
    assert "program (torch.export exporter) written to" in capsys.readouterr().out
    assert (tmp_path / "m.ep").is_file()


def test_registrations_refuse_what_cannot_work():
    with pytest.raises(pk.ConfigError, match="suffix must be a file suffix"):
        pk.register_export_format("x", "onnx", {"a": lambda *a: None}, checked_in="")
    with pytest.raises(pk.ConfigError, match="prefix must be a name"):
        pk.register_model_source("my source", lambda *a: nn.Identity())

    class Skip(pk.LayerCriterion):
        def score_layers(self, model, candidates, batches, context):
            return [0.0] * len(candidates)

    with pytest.raises(pk.ConfigError, match="streamed_span"):
        pk.register_criterion("skip", Skip(), scores="layers", streams=True)


def test_importing_prunekit_needs_none_of_its_extras():
    code = ("import sys\n"
            "for name in ['transformers', 'typer', 'rich', 'matplotlib', 'sklearn', 'onnx',\n"
            "             'onnxruntime', 'timm', 'ultralytics']:\n"
            "    sys.modules[name] = None  # as if not installed\n"
            "from prunekit import *\n"
            "print(len(__all__ if '__all__' in dir() else []))\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
