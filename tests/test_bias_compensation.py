"""FLAP's pieces: the ``fluctuation`` criterion scores what an independent computation of
``Var(x_c) · ‖W[:, c]‖²`` gives, and ``bias_compensation=True`` gives a removed channel's mean
back exactly (a constant channel costs nothing), survives every save and reload (the biases
it adds are in the plan and, for a Llama, in the config), and leaves the model as it was on
an interrupt or a mistake."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

import prunekit as pk
from prunekit.errors import ConfigError, PlanError
from prunekit.plan import Plan
from prunekit.recover import compensate as compensate_module
from prunekit.surgery.apply import apply_plan

from .helpers import layer_inputs, outputs

transformers = pytest.importorskip("transformers")

VOCAB = 100


def mlp_with_constant_units(constant: tuple[int, ...] = (1, 4, 6)) -> nn.Module:
    """Linear → ReLU → Linear whose hidden units ``constant`` output the same value for
    every input (no weights in, a positive bias): removing them loses only a mean."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 3, bias=False)).eval()
    with torch.no_grad():
        for unit in constant:
            model[0].weight[unit] = 0
            model[0].bias[unit] = 2.0 + unit
            model[2].weight[:, unit] *= 20  # heavy: a weight criterion keeps them
    return model


def batches(count: int = 3, seed: int = 1) -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return [torch.randn(16, 6, generator=generator) for _ in range(count)]


def tiny_llama() -> nn.Module:
    torch.manual_seed(0)
    config = transformers.LlamaConfig(vocab_size=VOCAB, hidden_size=32, intermediate_size=64,
                                      num_hidden_layers=2, num_attention_heads=4,
                                      num_key_value_heads=2, head_dim=8)
    return transformers.LlamaForCausalLM(config).eval()


def token_batches(count: int = 3, seed: int = 1) -> list[dict[str, torch.Tensor]]:
    generator = torch.Generator().manual_seed(seed)
    return [{"input_ids": torch.randint(0, VOCAB, (2, 12), generator=generator)}
            for _ in range(count)]


EXAMPLE = {"input_ids": torch.arange(16).remainder(VOCAB).view(2, 8)}


def test_fluctuation_scores_are_the_weighted_input_variance():
    model = mlp_with_constant_units(constant=())
    data = batches()
    method = pk.FilterPruning(0.5, criterion="fluctuation")
    graph = method.graph(model, data[0])
    groups = method.candidates(graph)
    (scores,) = method.score(graph, groups, data).values()
    hidden = torch.cat([model[1](model[0](x)) for x in data]).double()
    expected = hidden.var(0, unbiased=False) * model[2].weight.double().square().sum(0)
    torch.testing.assert_close(scores.double(), expected.detach())


def test_head_fluctuation_is_the_squared_channel_scores_summed_per_head():
    model = tiny_llama()
    data = token_batches()
    method = pk.HeadPruning(0.5, criterion="fluctuation")
    graph = method.graph(model, EXAMPLE)
    groups = method.candidates(graph)
    scores = method.score(graph, groups, data)
    names = [f"model.layers.{i}.self_attn.o_proj" for i in range(2)]
    captured = layer_inputs(model, names, data)
    expected = []
    for name, layer in zip(names, model.model.layers):
        x = captured[name]
        channel = x.var(0, unbiased=False) * layer.self_attn.o_proj.weight.double().square().sum(0)
        # a unit is a key/value head with its 2 query heads: 16 channels of the projection
        expected.append(channel.square().reshape(2, 16).sum(1))
    got = [scores[g.axis].double() for g in groups]
    assert len(got) == 2
    for a, b in zip(got, expected):
        torch.testing.assert_close(a, b)


def test_head_fluctuation_reads_gpt2s_transposed_projection_along_its_input():
    # GPT-2's Conv1D keeps its weight as (in, out): the norm of what reads channel j is
    # over row j there, not column j (a square projection hid the difference)
    torch.manual_seed(0)
    model = transformers.GPT2LMHeadModel(transformers.GPT2Config(
        n_embd=32, n_layer=2, n_head=4, vocab_size=VOCAB, n_positions=32,
        bos_token_id=0, eos_token_id=0)).eval()
    with torch.no_grad():  # rows and columns of a random init have all but equal norms
        for block in model.transformer.h:
            block.attn.c_proj.weight[:8] *= 10  # what reads head 0's channels
    data = token_batches()
    method = pk.HeadPruning(0.5, criterion="fluctuation")
    graph = method.graph(model, EXAMPLE)
    groups = method.candidates(graph)
    scores = method.score(graph, groups, data)
    names = [f"transformer.h.{i}.attn.c_proj" for i in range(2)]
    captured = layer_inputs(model, names, data)
    assert len(groups) == 2
    for i, (group, name) in enumerate(zip(groups, names)):
        x = captured[name]
        weight = model.transformer.h[i].attn.c_proj.weight.double()  # (in, out)
        channel = x.var(0, unbiased=False) * weight.square().sum(1)
        torch.testing.assert_close(scores[group.axis].double(),
                                   channel.square().reshape(4, 8).sum(1))


def test_constant_channels_score_zero_and_compensation_gives_their_mean_back_exactly():
    model = mlp_with_constant_units()
    unpruned = copy.deepcopy(model)
    data = batches()
    result = pk.prune(model, data[0], pk.FilterPruning(3 / 8, criterion="fluctuation",
                                                       bias_compensation=True), data=data)
    assert result.plan.tensors["0.weight"][0] == [0, 2, 3, 5, 7]  # the constant units went
    assert result.plan.biased == ["2"] and model[2].bias is not None
    assert result.after.params == sum(p.numel() for p in model.parameters())  # biases counted
    fresh = torch.randn(32, 6, generator=torch.Generator().manual_seed(9))
    torch.testing.assert_close(model(fresh), unpruned(fresh), rtol=1e-5, atol=1e-5)
    # without it the same cut loses the constants: the check can fail
    plain = copy.deepcopy(unpruned)
    pk.prune(plain, data[0], pk.FilterPruning(3 / 8, criterion="fluctuation"), data=data)
    assert (plain(fresh) - unpruned(fresh)).abs().max() > 1


def test_an_existing_bias_gets_a_new_tensor_and_the_users_is_not_written():
    model = mlp_with_constant_units()
    model[2] = nn.Linear(8, 3).eval()
    with torch.no_grad():
        model[2].weight[:, [1, 4, 6]] *= 20
    old_bias, old_values = model[2].bias, model[2].bias.detach().clone()
    result = pk.prune(model, batches()[0], pk.FilterPruning(3 / 8, criterion="fluctuation",
                                                            bias_compensation=True),
                      data=batches())
    assert result.plan.biased == []
    assert model[2].bias is not old_bias and torch.equal(old_bias, old_values)
    assert not torch.equal(model[2].bias, old_values)


@pytest.mark.parametrize("method", [
    pk.FilterPruning(0.5, criterion="fluctuation", bias_compensation=True),
    pk.HeadPruning(0.5, criterion="fluctuation", bias_compensation=True)], ids=["mlp", "heads"])
def test_a_compensated_llama_reloads_with_from_pretrained_and_with_pk_load(tmp_path, method):
    model = tiny_llama()
    result = pk.prune(model, EXAMPLE, method, data=token_batches())
    switch = "mlp_bias" if isinstance(method, pk.FilterPruning) else "attention_bias"
    assert result.config_matches and getattr(model.config, switch) is True
    assert all(getattr(model.get_submodule(name), "bias") is not None
               for name in result.plan.biased)
    assert len(result.plan.biased) == (6 if switch == "mlp_bias" else 8)  # per layer: 3 / 4
    expected = outputs(model, EXAMPLE)
    model.save_pretrained(tmp_path / "hf")
    reloaded = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "hf").eval()
    restored = pk.load(tiny_llama(), pk.save(model, tmp_path / "pk", result.plan))
    for other in (reloaded, restored):
        for a, b in zip(expected, outputs(other, EXAMPLE)):
            assert torch.equal(a, b)


def test_compensation_lowers_the_loss_of_a_cut_on_a_model_whose_inputs_have_a_mean():
    # a trained model's MLP inputs have means; random weights give them here through the gate
    model = tiny_llama()
    with torch.no_grad():
        for layer in model.model.layers:
            layer.mlp.gate_proj.bias = nn.Parameter(torch.full((64,), 2.0))
            layer.mlp.up_proj.bias = nn.Parameter(torch.full((64,), 1.0))
    unpruned = copy.deepcopy(model)
    fresh = token_batches(1, seed=7)[0]
    errors = {}
    for compensate in (False, True):
        pruned = copy.deepcopy(unpruned)
        pk.prune(pruned, EXAMPLE, pk.FilterPruning(0.5, criterion="fluctuation",
                                                   bias_compensation=compensate),
                 data=token_batches())
        with torch.no_grad():
            errors[compensate] = float((pruned(**fresh).logits
                                        - unpruned(**fresh).logits).square().mean())
    assert errors[True] < 0.5 * errors[False]


def test_an_interrupt_while_compensating_leaves_the_model_as_it_was(monkeypatch):
    model = tiny_llama()
    before = dict(model.named_parameters())
    values = {name: p.detach().clone() for name, p in before.items()}

    def interrupted(*_):
        raise KeyboardInterrupt

    monkeypatch.setattr(compensate_module, "bias_companions", interrupted)
    with pytest.raises(KeyboardInterrupt):
        pk.prune(model, EXAMPLE, pk.FilterPruning(0.5, criterion="fluctuation",
                                                  bias_compensation=True),
                 data=token_batches())
    assert dict(model.named_parameters()).keys() == before.keys()
    for name, parameter in model.named_parameters():
        assert parameter is before[name] and torch.equal(parameter, values[name])
    assert model.config.mlp_bias is False and model.config.intermediate_size == 64


def test_a_re_fit_with_bias_compensation_fits_a_bias_the_layer_lacked():
    data = batches()
    fresh = torch.randn(32, 6, generator=torch.Generator().manual_seed(9))
    errors = {}
    for compensate in (False, True):
        model = mlp_with_constant_units()
        unpruned = copy.deepcopy(model)
        result = pk.prune(model, data[0], pk.ChannelPruning(
            3 / 8, criterion="fluctuation", reconstruct=True, bias_compensation=compensate),
            data=data)
        assert result.plan.biased == (["2"] if compensate else [])
        errors[compensate] = float((model(fresh) - unpruned(fresh)).abs().max())
    # (outputs of tens; the fit is ridge-regularised)
    assert errors[True] < 1e-3 < 1 < errors[False]  # without a bias the constants are lost


def test_rotation_and_bias_compensation_are_refused_together_in_one_line():
    with pytest.raises(ConfigError, match="leave bias_compensation out"):
        pk.HiddenPruning(0.5, rotate=True, bias_compensation=True)


def test_compensation_without_data_or_streamed_is_refused_and_the_model_left_alone(tmp_path):
    model = tiny_llama()
    before = {name: p.detach().clone() for name, p in model.state_dict().items()}
    method = pk.FilterPruning(0.5, criterion="l1", bias_compensation=True)
    with pytest.raises(ConfigError, match=r"bias_compensation=True\) reads calibration data"):
        pk.prune(model, EXAMPLE, method)
    assert all(torch.equal(before[n], t) for n, t in model.state_dict().items())
    with pytest.raises(ConfigError, match="bias_compensation=True\\) is not built"):
        method.streamed_stage()


def test_a_plan_that_gives_a_bias_to_what_has_one_or_is_not_linear_is_refused():
    assert Plan.from_json(Plan(biased=["2"]).to_json()).biased == ["2"]
    model = mlp_with_constant_units()
    for name in ("0", "1", "nothing"):  # has a bias; a ReLU; absent
        with pytest.raises(PlanError, match=f"gives '{name}' a bias"):
            apply_plan(model, Plan(biased=[name]))
    apply_plan(model, Plan(biased=["2"]))
    assert torch.equal(model[2].bias, torch.zeros(3))
