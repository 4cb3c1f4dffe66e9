"""``pk.sample_text``: calibration and recovery text a language model writes itself, and
``--data samples:N`` on the command line."""

from __future__ import annotations

import copy

import pytest
import torch
from typer.testing import CliRunner

import prunekit as pk
from prunekit.cli.commands import app
from prunekit.cli.text import language_batches

from .test_cli_language_model import language_model_folder

transformers = pytest.importorskip("transformers")


def tiny_llama(vocab: int = 40) -> torch.nn.Module:
    torch.manual_seed(0)
    return transformers.LlamaForCausalLM(transformers.LlamaConfig(
        vocab_size=vocab, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
        num_attention_heads=2, num_key_value_heads=1, bos_token_id=1, eos_token_id=2)).eval()


def favouring(model: torch.nn.Module, *logits: tuple[int, float]) -> torch.nn.Module:
    """The model with an output layer that gives each ``(token, logit)`` its logit, whatever
    the input, and every other token 0."""
    head = torch.nn.Linear(model.lm_head.in_features, model.lm_head.out_features)
    with torch.no_grad():
        head.weight.zero_()
        head.bias.zero_()
        for token, logit in logits:
            head.bias[token] = logit
    model.lm_head = head
    return model


def test_samples_start_from_the_first_token_and_have_the_length_asked():
    ids = pk.sample_text(tiny_llama(), sequences=5, length=12, batch=2)
    assert ids.shape == (5, 12) and ids.dtype == torch.long
    assert (ids[:, 0] == 1).all()
    assert len({tuple(row.tolist()) for row in ids}) > 1  # sampled, not one greedy text


def test_samples_come_from_the_model():
    """A model that all but always says token 7 writes token 7 after its first token."""
    ids = pk.sample_text(favouring(tiny_llama(), (7, 100.0)), sequences=3, length=9)
    assert (ids[:, 1:] == 7).all()


def test_the_end_of_text_token_is_never_chosen_so_every_sequence_is_whole():
    model = favouring(tiny_llama(), (2, 100.0), (5, 50.0))  # end of text (2), then 5
    ids = pk.sample_text(model, sequences=2, length=10)
    assert ids.shape == (2, 10) and (ids[:, 1:] == 5).all()


def test_the_seed_decides_the_text_and_the_callers_random_state_is_untouched():
    model = tiny_llama()
    torch.manual_seed(123)
    state = torch.random.get_rng_state()
    first = pk.sample_text(model, sequences=4, length=10, seed=3)
    assert torch.equal(torch.random.get_rng_state(), state)
    assert torch.equal(first, pk.sample_text(model, sequences=4, length=10, seed=3))
    assert not torch.equal(first, pk.sample_text(model, sequences=4, length=10, seed=4))


def test_the_model_is_left_as_it_was():
    model = tiny_llama().train()
    before = copy.deepcopy(model.state_dict())
    steps = []
    pk.sample_text(model, sequences=3, length=5, batch=2, progress=steps.append)
    assert model.training
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert [(s.done, s.total) for s in steps] == [(2, 3), (3, 3)]


@pytest.mark.parametrize("options, message", [
    ({"sequences": 0}, "sequences=0: give a whole number of at least 1"),
    ({"length": 1}, "length=1: give a whole number of at least 2"),
    ({"batch": 2.5}, "batch=2.5: give a whole number"),
    ({"temperature": 0}, "temperature=0: give a positive temperature"),
])
def test_bad_arguments_are_one_line(options, message):
    with pytest.raises(pk.ConfigError, match=message):
        pk.sample_text(tiny_llama(), **options)


def test_a_model_that_does_not_generate_is_refused():
    with pytest.raises(pk.ConfigError, match="model: pk.sample_text needs a language model"):
        pk.sample_text(torch.nn.Linear(2, 2))


def test_a_model_with_no_token_to_start_from_is_refused():
    model = tiny_llama()
    model.config.bos_token_id = model.config.eos_token_id = None
    model.generation_config.bos_token_id = model.generation_config.eos_token_id = None
    with pytest.raises(pk.ConfigError, match="names no beginning- or end-of-text token"):
        pk.sample_text(model)


# -- the command line -----------------------------------------------------------------------------
def test_text_and_samples_alternate_so_the_first_batches_hold_both(tmp_path):
    folder, text = language_model_folder(tmp_path)
    model = transformers.AutoModelForCausalLM.from_pretrained(folder).eval()
    mixed = language_batches(f"text:{text}+samples:12", f"hf:{folder}", model)
    texts = language_batches(f"text:{text}", f"hf:{folder}", model)
    samples = language_batches("samples:12", f"hf:{folder}", model)
    assert len(samples) == 3 and all(b["input_ids"].shape == (4, 256) for b in samples)
    assert len(mixed) == len(texts) + 3
    assert len(texts) < len(samples)  # the samples' last batches come one after another
    order = [b for pair in zip(texts, samples) for b in pair] + samples[len(texts):]
    assert all(torch.equal(a["input_ids"], b["input_ids"]) for a, b in zip(mixed, order))


def test_one_command_calibrates_and_recovers_on_the_models_own_samples(tmp_path):
    folder, text = language_model_folder(tmp_path)
    out = tmp_path / "out"
    result = CliRunner().invoke(app, [
        "prune", "--model", f"hf:{folder}", "--method", "filter", "--criterion",
        "fluctuation", "--bias-compensation", "--ratio", "0.25", "--data",
        f"text:{text}+samples:8", "--recover-minutes", "0.02", "--no-latency", "--out",
        str(out)])
    assert result.exit_code == 0, result.output
    printed = " ".join(result.output.split())
    assert "recovered:" in printed and "random example inputs" not in printed
    reloaded = transformers.AutoModelForCausalLM.from_pretrained(out / "hf")
    assert reloaded.config.intermediate_size == 48


@pytest.mark.parametrize("data, extra, message", [
    ("samples:lots", [], "--data 'samples:lots': give the number of sequences to sample"),
    ("samples:0", [], "--data 'samples:0': give the number of sequences to sample"),
    ("text:{text}+words:3", [], "'words:3' is neither text:PATH nor samples:N"),
    ("samples:8", ["--stream"], "--data samples:N: sampling runs the whole model"),
])
def test_sample_mistakes_are_one_line(tmp_path, data, extra, message):
    folder, text = language_model_folder(tmp_path)
    result = CliRunner().invoke(app, ["prune", "--model", f"hf:{folder}", "--data",
                                      data.format(text=text), *extra, "--no-latency", "--out",
                                      str(tmp_path / "x")])
    assert result.exit_code == 2, result.output
    assert message in " ".join(result.output.split())
    assert not (tmp_path / "x").exists()


def test_a_streamed_prune_reads_text_files(tmp_path):
    """``--stream --data text:PATH`` calibrates on the text (it had gone to the factory
    loader, which read ``text`` as a module to import)."""
    folder, text = language_model_folder(tmp_path)
    result = CliRunner().invoke(app, ["prune", "--model", f"hf:{folder}", "--stream",
                                      "--method", "filter", "--criterion", "mean_activation",
                                      "--ratio", "0.25", "--data", f"text:{text}", "--out",
                                      str(tmp_path / "out")])
    assert result.exit_code == 0, result.output
    reloaded = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "out")
    assert reloaded.config.intermediate_size == 48


def test_samples_need_a_model_that_writes_text(tmp_path):
    result = CliRunner().invoke(app, ["prune", "--model", "torchvision:resnet18", "--data",
                                      "samples:4", "--no-latency", "--out", str(tmp_path / "x")])
    assert result.exit_code == 2, result.output
    assert "pk.sample_text needs a language model that generates" in " ".join(
        result.output.split())
    assert not (tmp_path / "x").exists()


def test_an_interrupt_mid_sampling_leaves_the_model_and_random_state_as_they_were():
    model = tiny_llama().train()
    torch.manual_seed(5)
    state = torch.random.get_rng_state()

    def interrupt(step):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        pk.sample_text(model, sequences=4, length=6, batch=2, progress=interrupt)
    assert model.training
    assert torch.equal(torch.random.get_rng_state(), state)
