"""One command from a language model's folder to a pruned, recovered model that reloads with
``from_pretrained``: text files as ``--data`` (read with the model's own tokenizer), a
parameters target, a recovery time budget, low-rank adapters."""

from __future__ import annotations

import pytest
import torch
from typer.testing import CliRunner

import prunekit as pk
from prunekit.cli.commands import app

from .helpers import outputs

transformers = pytest.importorskip("transformers")
tokenizers = pytest.importorskip("tokenizers")

WORDS = ("the model reads text and writes text; pruning removes what it needs least, and "
         "recovery teaches the rest what was lost. ")


def language_model_folder(tmp_path):
    """A small Llama with a word-level tokenizer trained on ``WORDS``, saved as a folder."""
    tokenizer = tokenizers.Tokenizer(tokenizers.models.WordLevel(unk_token="[UNK]"))
    tokenizer.pre_tokenizer = tokenizers.pre_tokenizers.Whitespace()
    tokenizer.train_from_iterator([WORDS], tokenizers.trainers.WordLevelTrainer(
        special_tokens=["[UNK]"]))
    fast = transformers.PreTrainedTokenizerFast(tokenizer_object=tokenizer, unk_token="[UNK]")
    torch.manual_seed(0)
    model = transformers.LlamaForCausalLM(transformers.LlamaConfig(
        vocab_size=len(fast), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2))
    folder = tmp_path / "lm"
    model.save_pretrained(folder)
    fast.save_pretrained(folder)
    (tmp_path / "text").mkdir()
    (tmp_path / "text" / "a.txt").write_text(WORDS * 60)
    (tmp_path / "text" / "b.md").write_text(WORDS * 60)
    return folder, tmp_path / "text"


def test_one_command_prunes_recovers_and_saves_a_reloadable_model(tmp_path):
    folder, text = language_model_folder(tmp_path)
    out = tmp_path / "out"
    result = CliRunner().invoke(app, [
        "prune", "--model", f"hf:{folder}", "--method", "hidden", "--rotate",
        "--params-target", "0.2", "--round-to", "8", "--data", f"text:{text}",
        "--recover-minutes", "0.02", "--lora-rank", "4", "--no-latency", "--out", str(out)])
    assert result.exit_code == 0, result.output
    printed = " ".join(result.output.split())
    assert "recovered:" in printed and "random example inputs" not in printed
    reloaded = transformers.AutoModelForCausalLM.from_pretrained(out / "hf").eval()
    tokenizer = transformers.AutoTokenizer.from_pretrained(out / "hf")
    ids = tokenizer("the model reads text", return_tensors="pt")
    restored = pk.load(transformers.AutoModelForCausalLM.from_pretrained(folder), out)
    for a, b in zip(outputs(reloaded, dict(ids)), outputs(restored, dict(ids))):
        assert torch.equal(a, b)
    original = sum(p.numel() for p in transformers.AutoModelForCausalLM.from_pretrained(
        folder).parameters())
    assert sum(p.numel() for p in reloaded.parameters()) < original * 0.85


@pytest.mark.parametrize("options, message", [
    (["--recover-minutes", "1"], "--recover-minutes: recovery trains on --data"),
    (["--lora-rank", "4"], "--lora-rank: it sets what --recover-minutes trains; give "
                           "--recover-minutes too"),
    (["--recover-batch", "4"], "--recover-batch: it sets what --recover-minutes trains"),
    (["--data", "samples:4", "--recover-minutes", "1", "--recover-batch", "0"],
     "--recover-batch 0: give a positive number of sequences"),
    (["--data", "batches.py:make", "--recover-minutes", "1", "--recover-batch", "2"],
     "--recover-batch: it cuts text:/samples: data into steps; recovery trains on the "
     "batches 'batches.py:make' makes as they are"),
    (["--ratio", "0.2", "--params-target", "0.1"], "--ratio and --params-target"),
    (["--params-target", "0.1", "--flops-target", "0.1"],
     "--flops-target and --params-target: give one target"),
    (["--data", "text:nowhere.txt"], "no file or folder 'nowhere.txt'"),
])
def test_command_line_mistakes_are_one_line(tmp_path, options, message):
    folder, _ = language_model_folder(tmp_path)
    result = CliRunner().invoke(app, ["prune", "--model", f"hf:{folder}", *options,
                                      "--no-latency", "--out", str(tmp_path / "x")])
    assert result.exit_code == 2, result.output
    assert message in " ".join(result.output.split())
    assert not (tmp_path / "x").exists()


def test_keep_leaves_the_named_layer_whole_and_the_budget_falls_on_the_others(tmp_path):
    folder, text = language_model_folder(tmp_path)
    widths = {}
    for keep in ([], ["--keep", "model.layers.0"]):
        out = tmp_path / f"out{len(keep)}"
        result = CliRunner().invoke(app, [
            "prune", "--model", f"hf:{folder}", "--params-target", "0.2", "--data",
            f"text:{text}", *keep, "--no-latency", "--out", str(out)])
        assert result.exit_code == 0, result.output
        model = pk.load(transformers.AutoModelForCausalLM.from_pretrained(folder), out)
        widths[len(keep)] = [layer.mlp.up_proj.out_features for layer in model.model.layers]
    assert max(widths[0]) < 64  # every layer pruned
    assert widths[2][0] == 64 and widths[2][1] < min(widths[0])  # kept; the other pays more


@pytest.mark.parametrize("options, message", [
    (["--keep", "model.layer.0"], "--keep: the model has no module 'model.layer.0'; did you "
                                  "mean 'model.layers.0'"),
    (["--keep", ""], "--keep '': give the name of a module inside the model"),
    (["--keep", "model.layers.0", "--stream"], "--keep: a streamed prune treats every block "
                                               "alike"),
    (["--method", "heads", "--heads-first", "0.5"],
     "--heads-first: it comes before --method filter or channel, not heads"),
    (["--heads-first", "1.5"], "--heads-first 1.5: give the fraction of each layer's heads"),
    (["--heads-first", "0.4"], "--heads-first 0.4: that share of each layer's heads is less "
                               "than one head here"),
    (["--heads-first", "0.5", "--stream"], "--heads-first: a streamed prune runs one method"),
    (["--heads-first", "0.5", "--latency-target", "0.8"],
     "--heads-first and --latency-target"),
    (["--heads-first", "0.5", "--criterion", "apoz"],
     "--heads-first: --criterion: unknown criterion 'apoz' for heads"),
    (["--heads-first", "0.5", "--params-target", "0.01"],
     "--params-target 0.01: --heads-first already removed"),
])
def test_keep_and_heads_first_mistakes_are_one_line_and_leave_nothing(tmp_path, options,
                                                                     message):
    folder, _ = language_model_folder(tmp_path)
    before = {p.name: p.read_bytes() for p in folder.iterdir()}
    result = CliRunner().invoke(app, ["prune", "--model", f"hf:{folder}", *options,
                                      "--no-latency", "--out", str(tmp_path / "x")])
    assert result.exit_code == 2, result.output
    assert message in " ".join(result.output.split())
    assert not (tmp_path / "x").exists()
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == before


def test_heads_first_then_channels_in_one_command_reloads_with_one_plan(tmp_path):
    """--heads-first: a share of every layer's heads, then the MLP until the parameters
    target counts both; one plan that pk.load applies as from_pretrained reads the sizes."""
    folder, text = language_model_folder(tmp_path)
    out = tmp_path / "out"
    result = CliRunner().invoke(app, [
        "prune", "--model", f"hf:{folder}", "--heads-first", "0.5", "--criterion",
        "fluctuation", "--bias-compensation", "--params-target", "0.3", "--data",
        f"text:{text}", "--no-latency", "--out", str(out)])
    assert result.exit_code == 0, result.output
    printed = " ".join(result.output.split())
    assert "HeadPruning" in printed and ", then FilterPruning" in printed
    assert "heads first: check: equivalent" in printed and "check: equivalent" in printed
    original = transformers.AutoModelForCausalLM.from_pretrained(folder)
    restored = pk.load(transformers.AutoModelForCausalLM.from_pretrained(folder), out)
    for layer in restored.model.layers:  # half the key/value heads, and neurons after them
        assert layer.self_attn.k_proj.out_features == 8 and layer.mlp.up_proj.out_features < 64
    size = sum(p.numel() for p in original.parameters())
    kept = sum(p.numel() for p in restored.parameters())
    assert 0.28 <= 1 - kept / size <= 0.33  # the target counts the heads' share too
    reloaded = transformers.AutoModelForCausalLM.from_pretrained(out / "hf").eval()
    ids = transformers.AutoTokenizer.from_pretrained(out / "hf")("the model reads text",
                                                                 return_tensors="pt")
    for a, b in zip(outputs(reloaded, dict(ids)), outputs(restored, dict(ids))):
        assert torch.equal(a, b)
    # the first layer whole: its heads differ from the other's, which no config describes,
    # though the MLP step alone would be uniform
    kept = tmp_path / "kept"
    result = CliRunner().invoke(app, [
        "prune", "--model", f"hf:{folder}", "--heads-first", "0.5", "--ratio", "0.25",
        "--keep", "model.layers.0", "--data", f"text:{text}", "--no-latency", "--out",
        str(kept)])
    assert result.exit_code == 0, result.output
    assert not (kept / "hf").exists() and (kept / "tokenizer").is_dir()
    restored = pk.load(transformers.AutoModelForCausalLM.from_pretrained(folder), kept)
    first, second = restored.model.layers
    assert (first.self_attn.k_proj.out_features, first.mlp.up_proj.out_features) == (16, 64)
    assert (second.self_attn.k_proj.out_features, second.mlp.up_proj.out_features) == (8, 48)


def test_text_needs_a_model_with_a_tokenizer(tmp_path):
    (tmp_path / "t.txt").write_text(WORDS)
    result = CliRunner().invoke(app, ["prune", "--model", "torchvision:resnet18", "--data",
                                      f"text:{tmp_path / 't.txt'}", "--out",
                                      str(tmp_path / "x")])
    assert result.exit_code == 2
    assert "text is read with the model's tokenizer; give --model hf:PATH" in \
        " ".join(result.output.split())


@pytest.mark.parametrize("options, size", [([], 2), (["--recover-batch", "3"], 3),
                                           (["--recover-batch", "6"], 6)])
def test_recovery_steps_on_pairs_of_the_sequences_pruning_read_in_fours(tmp_path,
                                                                       monkeypatch, options,
                                                                       size):
    """A time budget buys as many sequences in pairs as in fours, and twice the steps;
    ``--recover-batch`` sets another size, more than the 4 pruning reads too."""
    import prunekit.cli.prune as command

    seen, real = [], command.distill

    def recording(student, teacher, data, **options):
        seen.extend(len(batch["input_ids"]) for batch in data)
        return real(student, teacher, data, **options)

    monkeypatch.setattr(command, "distill", recording)
    folder, text = language_model_folder(tmp_path)
    result = CliRunner().invoke(app, [
        "prune", "--model", f"hf:{folder}", "--method", "filter", "--ratio", "0.25",
        "--data", f"text:{text}", "--recover-minutes", "0.01", *options, "--no-latency",
        "--out", str(tmp_path / "out")])
    assert result.exit_code == 0, result.output
    assert len(seen) > 1 and set(seen[:-1]) == {size} and seen[-1] <= size


def test_recovery_batches_join_the_sequences_and_cut_them_into_steps_in_order():
    from prunekit.cli.text import recovery_batches

    ids = torch.arange(11 * 3).view(11, 3)
    cut = recovery_batches([{"input_ids": ids[:4]}, {"input_ids": ids[4:8]},
                            {"input_ids": ids[8:]}])
    assert [len(batch["input_ids"]) for batch in cut] == [2, 2, 2, 2, 2, 1]
    assert torch.equal(torch.cat([batch["input_ids"] for batch in cut]), ids)
    larger = recovery_batches([{"input_ids": ids[:4]}, {"input_ids": ids[4:]}], 8)
    assert [len(batch["input_ids"]) for batch in larger] == [8, 3]
    assert torch.equal(torch.cat([batch["input_ids"] for batch in larger]), ids)


def test_too_little_text_is_one_line(tmp_path):
    folder, _ = language_model_folder(tmp_path)
    (tmp_path / "short.txt").write_text("the model")
    result = CliRunner().invoke(app, ["prune", "--model", f"hf:{folder}", "--data",
                                      f"text:{tmp_path / 'short.txt'}", "--out",
                                      str(tmp_path / "x")])
    assert result.exit_code == 2
    assert "fewer than one sequence of 256" in " ".join(result.output.split())


def test_a_model_dequantized_from_gguf_saves_with_save_pretrained(tmp_path):
    """transformers keeps the GGUF quantizer on a model it dequantized to float32, and then
    ``save_pretrained`` refuses it; ``--model hf:FILE.gguf`` drops the mark."""
    quantizers = pytest.importorskip("transformers.quantizers.quantizer_gguf")
    from prunekit.cli.text import dequantized

    model = transformers.LlamaForCausalLM(transformers.LlamaConfig(
        vocab_size=50, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
        num_attention_heads=2, num_key_value_heads=1))
    config = transformers.GgufConfig() if hasattr(transformers, "GgufConfig") else None
    if config is None:
        pytest.skip("this transformers has no GgufConfig")
    model.hf_quantizer = quantizers.GgufHfQuantizer(config)
    model.config.quantization_config = config
    with pytest.raises(ValueError, match="not serializable"):
        model.save_pretrained(tmp_path / "refused")
    dequantized(model).save_pretrained(tmp_path / "saved")
    reloaded = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "saved")
    assert torch.equal(reloaded.model.embed_tokens.weight, model.model.embed_tokens.weight)
