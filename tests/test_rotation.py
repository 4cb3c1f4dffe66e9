"""Hidden size by rotation (``HiddenPruning(rotate=True)``): the rotated, unsliced model is
the original (checked here independently of the method's own check), the check refuses a
model the rotation would change, slicing the rotated stream loses less than slicing the raw
one, and the untied output layer survives every save and reload."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

import prunekit as pk
from prunekit.errors import PlanError, PruneError
from prunekit.plan import Plan
from prunekit.surgery import rotation as rotation_module
from prunekit.surgery.apply import apply_plan
from prunekit.surgery.rotation import rotation

from .helpers import outputs

transformers = pytest.importorskip("transformers")

HIDDEN, VOCAB = 32, 100


def tiny_llama(family: str = "llama", tied: bool = True) -> nn.Module:
    """A two-layer decoder of ``family`` (Gemma's norms scale by ``1 + weight``)."""
    torch.manual_seed(0)
    config = transformers.AutoConfig.for_model(
        family, vocab_size=VOCAB, hidden_size=HIDDEN, intermediate_size=64, head_dim=8,
        num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
        tie_word_embeddings=tied)
    model = transformers.AutoModelForCausalLM.from_config(config).eval()
    with torch.no_grad():  # norms that are not all ones: their folding is exercised
        for name, parameter in model.named_parameters():
            if "norm" in name:
                parameter.uniform_(0.5, 1.5)
    return model


def token_batches(count: int = 4, seed: int = 1) -> list[dict[str, torch.Tensor]]:
    generator = torch.Generator().manual_seed(seed)
    return [{"input_ids": torch.randint(0, VOCAB, (2, 12), generator=generator)}
            for _ in range(count)]


EXAMPLE = {"input_ids": torch.arange(16).remainder(VOCAB).view(2, 8)}


def kl(reference: nn.Module, model: nn.Module, inputs) -> float:
    with torch.no_grad():
        want = reference(**inputs).logits.log_softmax(-1)
        got = model(**inputs).logits.log_softmax(-1)
    return float((want.exp() * (want - got)).sum(-1).mean())


def hidden_group(model):
    method = pk.HiddenPruning(0.25, rotate=True)
    return method.candidates(method.graph(model, EXAMPLE))[0]


@pytest.mark.parametrize("family", ["llama", "qwen2", "gemma"])
def test_the_rotated_unsliced_model_is_the_original(family):
    model = tiny_llama(family)
    original = copy.deepcopy(model)
    rotated = rotation(model, hidden_group(model), EXAMPLE, token_batches())
    assert "equal to the original" in rotated.checked
    for a, b in zip(outputs(original, EXAMPLE), outputs(model, EXAMPLE)):
        assert torch.equal(a, b)  # finding the rotation left the model as it was
    rotated.slice(model, torch.arange(HIDDEN))  # every direction kept: a pure rotation
    assert not torch.allclose(model.model.embed_tokens.weight,
                              original.model.embed_tokens.weight)
    fresh = token_batches(1, seed=7)[0]
    for a, b in zip(outputs(original, fresh), outputs(model, fresh)):
        torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-4)


def test_slicing_the_rotated_stream_loses_less_than_slicing_the_raw_one():
    original = tiny_llama()
    losses = {}
    for rotate in (False, True):
        model = copy.deepcopy(original)
        method = pk.HiddenPruning(0.25, rotate=True) if rotate else pk.HiddenPruning(0.25, "l2")
        pk.prune(model, EXAMPLE, method, data=token_batches())
        assert model.config.hidden_size == HIDDEN * 3 // 4
        losses[rotate] = kl(original, model, token_batches(1, seed=9)[0])
    assert losses[True] < losses[False] / 2


class NormInTheStream(nn.Module):
    """A block whose norm's output is added to the residual stream, not only read by a
    layer: a rotation cannot fold that norm's scale anywhere."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(VOCAB, HIDDEN)
        self.norm = nn.RMSNorm(HIDDEN)
        self.up = nn.Linear(HIDDEN, 48, bias=False)
        self.down = nn.Linear(48, HIDDEN, bias=False)
        self.final = nn.RMSNorm(HIDDEN)
        self.head = nn.Linear(HIDDEN, VOCAB, bias=False)
        with torch.no_grad():
            self.norm.weight.uniform_(0.5, 1.5)

    def forward(self, input_ids):
        x = self.embed(input_ids)
        h = self.norm(x)
        x = h + self.down(torch.relu(self.up(h)))
        return self.head(self.final(x))


def test_a_model_the_rotation_would_change_is_refused_and_left_as_it_was():
    model = NormInTheStream().eval()
    before = {name: p for name, p in model.named_parameters()}
    values = {name: p.detach().clone() for name, p in before.items()}
    ids = torch.randint(0, VOCAB, (2, 8))
    with pytest.raises(PruneError, match="not the original"):
        pk.prune(model, ids, pk.HiddenPruning(0.25, rotate=True),
                 data=[ids, (ids + 1) % VOCAB])
    for name, parameter in model.named_parameters():
        assert parameter is before[name] and torch.equal(parameter, values[name])


class PreNorm(NormInTheStream):
    def forward(self, input_ids):
        x = self.embed(input_ids)
        x = x + self.down(torch.relu(self.up(self.norm(x))))
        return self.head(self.final(x))


def test_the_same_model_without_the_norm_in_the_stream_rotates():
    model = PreNorm().eval()
    ids = torch.randint(0, VOCAB, (2, 8))
    result = pk.prune(model, ids, pk.HiddenPruning(0.25, rotate=True),
                      data=[ids, (ids + 1) % VOCAB])
    assert model.embed.weight.shape == (VOCAB, 24) and model.head.weight.shape == (VOCAB, 24)
    assert model.norm.normalized_shape == (24,) and not result.skipped


def with_layer_norm() -> nn.Module:
    model = PreNorm()
    model.norm = nn.LayerNorm(HIDDEN, bias=False)
    return model.eval()


def gpt2() -> nn.Module:
    return transformers.GPT2LMHeadModel(transformers.GPT2Config(
        n_embd=HIDDEN, n_head=4, n_layer=1, vocab_size=VOCAB, bos_token_id=0,
        eos_token_id=0)).eval()


@pytest.mark.parametrize("build, message", [
    (with_layer_norm, r"^HiddenPruning\(rotate=True\): norm \(LayerNorm\) is not an RMSNorm"),
    (gpt2, r"^HiddenPruning\(rotate=True\): cannot rotate transformer.h.0.attn.c_proj.bias "
           r"\(Conv1D"),
], ids=["layernorm", "gpt2 conv1d"])
def test_what_cannot_rotate_is_refused_in_one_line_naming_it(build, message):
    model = build()
    weights = {name: p.detach().clone() for name, p in model.named_parameters()}
    ids = torch.randint(0, VOCAB, (2, 8))
    with pytest.raises(PruneError, match=message) as error:
        pk.prune(model, ids, pk.HiddenPruning(0.25, rotate=True), data=[ids])
    assert "\n" not in str(error.value)
    for name, parameter in model.named_parameters():
        assert torch.equal(parameter, weights[name])


def test_rotation_needs_calibration_data_and_the_model_in_memory():
    with pytest.raises(pk.ConfigError, match="pass data="):
        pk.prune(tiny_llama(), EXAMPLE, pk.HiddenPruning(0.25, rotate=True))
    with pytest.raises(pk.ConfigError, match="in memory"):
        pk.HiddenPruning(0.25, rotate=True).streamed_stage()
    with pytest.raises(pk.ConfigError, match="leave criterion out"):
        pk.HiddenPruning(0.25, "l2", rotate=True)


def test_the_untied_output_layer_saves_and_reloads_both_ways(tmp_path):
    model = tiny_llama()
    result = pk.prune(model, EXAMPLE, pk.HiddenPruning(0.25, rotate=True),
                      data=token_batches())
    assert model.lm_head.weight is not model.model.embed_tokens.weight
    assert result.plan.untied == ["lm_head.weight"]
    assert result.config_matches and model.config.tie_word_embeddings is False
    # the parameters counted include the output layer's own weight
    assert result.after.params == sum(p.numel() for p in model.parameters())
    expected = outputs(model, EXAMPLE)
    model.save_pretrained(tmp_path / "hf")
    reloaded = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "hf").eval()
    restored = pk.load(tiny_llama(), pk.save(model, tmp_path / "pk", result.plan))
    for other in (reloaded, restored):
        assert other.lm_head.weight is not other.model.embed_tokens.weight
        for a, b in zip(expected, outputs(other, EXAMPLE)):
            assert torch.equal(a, b)


def test_an_untied_model_stays_untied_and_its_plan_unties_nothing():
    model = tiny_llama(tied=False)
    result = pk.prune(model, EXAMPLE, pk.HiddenPruning(0.25, rotate=True),
                      data=token_batches())
    assert result.plan.untied == [] and model.config.tie_word_embeddings is False


def test_a_plan_that_unties_what_the_model_lacks_is_refused():
    plan = Plan(untied=["lm_head.nothing"])
    assert Plan.from_json(plan.to_json()).untied == ["lm_head.nothing"]
    with pytest.raises(PlanError, match="unties 'lm_head.nothing'"):
        apply_plan(tiny_llama(), plan)


# the check writes 21 tensors (16 rotated, 5 norms) and puts them back; slicing writes 21 more
@pytest.mark.parametrize("at", [5, 21 + 5], ids=["while checked", "while sliced"])
def test_an_interrupt_while_the_rotation_is_written_leaves_the_model_as_it_was(
        monkeypatch, at):
    model = tiny_llama()
    before = {name: p for name, p in model.named_parameters(remove_duplicate=False)}
    values = {name: p.detach().clone() for name, p in before.items()}
    writes = []
    real = rotation_module._set_parameter

    def interrupted(module, name, value):
        writes.append(name)
        if len(writes) == at:
            raise KeyboardInterrupt
        real(module, name, value)

    monkeypatch.setattr(rotation_module, "_set_parameter", interrupted)
    with pytest.raises(KeyboardInterrupt):
        pk.prune(model, EXAMPLE, pk.HiddenPruning(0.25, rotate=True), data=token_batches())
    assert len(writes) == at
    for name, parameter in model.named_parameters(remove_duplicate=False):
        assert parameter is before[name] and torch.equal(parameter, values[name])
    assert model.lm_head.weight is model.model.embed_tokens.weight
    assert model.config.hidden_size == HIDDEN and model.config.tie_word_embeddings


def test_the_command_line_rotates_a_folder_and_it_reloads_with_from_pretrained(tmp_path):
    from typer.testing import CliRunner

    from prunekit.cli.commands import app

    tiny_llama().save_pretrained(tmp_path / "llama")
    out = tmp_path / "out"
    result = CliRunner().invoke(app, ["prune", "--model", f"hf:{tmp_path / 'llama'}",
                                      "--method", "hidden", "--ratio", "0.25", "--rotate",
                                      "--no-latency", "--out", str(out)])
    assert result.exit_code == 0, result.output
    printed = " ".join(result.output.split())
    assert "--rotate read the random example inputs only" in printed
    reloaded = transformers.AutoModelForCausalLM.from_pretrained(out / "hf").eval()
    assert reloaded.config.hidden_size == 24 and not reloaded.config.tie_word_embeddings
    restored = pk.load(tiny_llama(), out)
    for a, b in zip(outputs(reloaded, EXAMPLE), outputs(restored, EXAMPLE)):
        assert torch.equal(a, b)
    wrong = CliRunner().invoke(app, ["prune", "--model", f"hf:{tmp_path / 'llama'}",
                                     "--method", "filter", "--rotate", "--out",
                                     str(tmp_path / "x")])
    assert wrong.exit_code == 2 and "--rotate: --method filter has no --rotate option; use " \
        "--method hidden" in " ".join(wrong.output.split())


def test_a_parameters_target_counts_the_untied_output_layer():
    model = tiny_llama()
    before = sum(p.numel() for p in model.parameters())
    result = pk.prune(model, EXAMPLE, pk.HiddenPruning(params_target=0.3, rotate=True),
                      data=token_batches())
    after = sum(p.numel() for p in model.parameters())
    assert result.plan.untied == ["lm_head.weight"]
    assert abs((1 - after / before) - 0.3) <= 0.02  # as close as whole channels allow
