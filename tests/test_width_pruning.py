"""``pk.WidthPruning``: FLAP's adaptive structure, heads and MLP neurons of every layer ranked
on one scale. Its scores are FLAP's standardised fluctuation as an independent computation
gives them; a head weighs the parameters it takes; a silenced head is the first head to go;
the budget is met; bias compensation gives back what the removed units' means carried; and
mistakes are one line that leave the model as it was."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn
from typer.testing import CliRunner

import prunekit as pk
from prunekit.cli.commands import app
from prunekit.errors import ConfigError, PruneError
from prunekit.graph.dependency import Group
from prunekit.methods.width import unit_parameters
from prunekit.selection.channels import lowest_by_weight

from .helpers import layer_inputs
from .test_bias_compensation import VOCAB, token_batches

transformers = pytest.importorskip("transformers")
EXAMPLE = {"input_ids": torch.arange(16).view(2, 8)}


def llama(layers: int = 3) -> nn.Module:
    """4 query heads reading 2 key/value heads of 8 dims; hidden 32, MLP 64."""
    torch.manual_seed(0)
    config = transformers.LlamaConfig(vocab_size=VOCAB, hidden_size=32, intermediate_size=64,
                                      num_hidden_layers=layers, num_attention_heads=4,
                                      num_key_value_heads=2, head_dim=8)
    return transformers.LlamaForCausalLM(config).eval()


def shapes(model) -> list[tuple[int, int]]:
    """(key/value heads, MLP neurons) of each layer."""
    return [(layer.self_attn.k_proj.out_features // 8, layer.mlp.gate_proj.out_features)
            for layer in model.model.layers]


def standardised(values: torch.Tensor) -> torch.Tensor:
    return (values - values.mean()) / values.std()


def test_scores_are_flaps_standardised_fluctuation():
    model, data = llama(), token_batches()
    method = pk.WidthPruning(0.3)
    graph = method.graph(model, EXAMPLE)
    groups = method.candidates(graph)
    scores = method.score(graph, groups, data)
    heads = {g.axis for g in graph.head_groups()}
    assert len(heads) == 3 and len(scores) == 6  # a head group and an MLP group per layer
    for i, layer in enumerate(model.model.layers):
        o_proj, down = f"model.layers.{i}.self_attn.o_proj", f"model.layers.{i}.mlp.down_proj"
        seen = layer_inputs(model, [o_proj, down], data)
        metric = {name: seen[name].var(0, unbiased=False)
                  * dict(model.named_modules())[name].weight.double().square().sum(0)
                  for name in seen}
        # FLAP: the output projection's channel scores squared, standardised over the layer,
        # then averaged over each head's channels (a key/value head: its two query heads')
        expected_heads = standardised(metric[o_proj].square()).view(2, 16).mean(1)
        expected_neurons = standardised(metric[down])
        found = {tuple(scores[g.axis].shape): scores[g.axis] for g in groups
                 if any(m.name.startswith(f"model.layers.{i}.") for m in g.members)}
        torch.testing.assert_close(found[(2,)], expected_heads)
        torch.testing.assert_close(found[(64,)], expected_neurons)


def test_a_head_weighs_every_parameter_it_takes_and_a_neuron_its_three_slices():
    model = llama(layers=1)
    graph = pk.WidthPruning().graph(model, EXAMPLE)
    (head,) = graph.head_groups()
    (neurons,) = [g for g in pk.WidthPruning().candidates(graph) if g.axis != head.axis]
    # two query heads' q and o slices and one key/value head's k and v slices, of hidden 32
    assert unit_parameters(graph, head) == (2 * 8 * 32) * 2 + (8 * 32) * 2
    assert unit_parameters(graph, neurons) == 3 * 32  # gate and up rows, a down column


def group(axis: int, size: int) -> Group:
    return Group(id=axis, axis=axis, size=size, members=[])


def test_the_lowest_go_by_weight_until_the_nearest_threshold():
    heads, neurons = group(0, 2), group(1, 10)
    scores = {0: torch.tensor([0.05, 3.0]), 1: torch.arange(10.0) / 10}
    weights = {0: 10, 1: 1}  # total 30
    # 0.0 and 0.05 (a head) and 0.1: 12 of 30, the nearest threshold to 0.4 of them
    assert lowest_by_weight([heads, neurons], scores, weights, 0.4, 0.9) == {0: 1, 1: 2}
    # a third of a head left to spend stops the ranking at that head: nearer than past it
    assert lowest_by_weight([heads, neurons], scores, weights, 0.1, 0.9) == {0: 0, 1: 1}
    # at most max_ratio of a group: its units past that are passed over, the rest go on
    assert lowest_by_weight([heads, neurons], scores, weights, 0.9, 0.5) == {0: 1, 1: 5}
    # a head past its group's cap does not stop the ranking, however heavy
    close = {0: torch.tensor([0.05, 0.06]), 1: torch.arange(10.0) / 10}
    assert lowest_by_weight([heads, neurons], close, weights, 0.5, 0.5) == {0: 1, 1: 5}
    removed = [sum(lowest_by_weight([heads, neurons], scores, weights, r, 0.9).values())
               for r in (0.1, 0.2, 0.4, 0.6, 0.8)]
    assert removed == sorted(removed)  # more ratio never keeps more: a budget can search it


def test_a_silenced_head_is_the_first_head_to_go_and_layers_end_up_different():
    model = llama()
    with torch.no_grad():  # layer 1's second key/value head all but silent
        model.model.layers[1].self_attn.v_proj.weight[8:] *= 1e-3
    kept_value_rows = model.model.layers[1].self_attn.v_proj.weight[:8].clone()
    data = token_batches()
    first = None
    for ratio in (0.1, 0.2, 0.3, 0.4, 0.5):
        pruned = copy.deepcopy(model)
        pk.prune(pruned, EXAMPLE, pk.WidthPruning(ratio), data=data)
        if any(heads < 2 for heads, _ in shapes(pruned)):
            first = pruned
            break
    assert first is not None, "no head went at any ratio up to 0.5"
    assert [heads for heads, _ in shapes(first)] == [2, 1, 2]
    assert torch.equal(first.model.layers[1].self_attn.v_proj.weight, kept_value_rows)
    assert len({neurons for _, neurons in shapes(first)}) > 1  # widths chosen per layer


def test_a_parameters_target_is_met_and_the_pruned_model_computes_the_masked_one():
    model, data = llama(), token_batches()
    before = sum(p.numel() for p in model.parameters())
    result = pk.prune(model, EXAMPLE, pk.WidthPruning(params_target=0.2, round_to=4),
                      data=data)
    removed = 1 - sum(p.numel() for p in model.parameters()) / before
    assert abs(removed - 0.2) <= 0.02
    assert result.report.ok and "equivalent" in str(result.report) and not result.skipped
    assert all(neurons % 4 == 0 for _, neurons in shapes(model))


def test_bias_compensation_gives_back_the_mean_each_removed_unit_gave_its_reader():
    model, data = llama(), token_batches()
    pruned = copy.deepcopy(model)
    pk.prune(pruned, EXAMPLE, pk.WidthPruning(0.4, bias_compensation=True), data=data)
    assert [heads for heads, _ in shapes(pruned)] != [2, 2, 2]  # heads went as well
    names = [f"model.layers.{i}.{p}" for i in range(3)
             for p in ("self_attn.o_proj", "mlp.down_proj")]
    seen = layer_inputs(model, names, data)  # the unpruned model's, as the compensation reads
    modules, pruned_modules = dict(model.named_modules()), dict(pruned.named_modules())
    for name in names:
        weight, kept = modules[name].weight.double(), pruned_modules[name].weight.double()
        # the columns that remain, found by their values
        columns = [int((weight - column[:, None]).abs().sum(0).argmin()) for column in kept.T]
        lost = sorted(set(range(weight.shape[1])) - set(columns))
        if not lost:  # a layer that lost nothing there is given no bias
            assert pruned_modules[name].bias is None
            continue
        expected = weight[:, lost] @ seen[name].mean(0)[lost]
        torch.testing.assert_close(pruned_modules[name].bias.double(), expected)


def test_the_method_round_trips_and_the_command_line_takes_it():
    method = pk.WidthPruning(params_target=0.25, bias_compensation=True, round_to=8)
    assert pk.PruningMethod.from_dict(method.to_dict()) == method
    from prunekit.methods import cli_methods

    assert cli_methods()["width"] is pk.WidthPruning


@pytest.mark.parametrize("build, message", [
    (lambda: pk.WidthPruning(criterion="l1"), "WidthPruning.criterion"),
    (lambda: pk.WidthPruning(overrides={"model.layers.0": 0.5}), "no overrides"),
    (lambda: pk.WidthPruning(global_ranking=True), "no overrides or global_ranking"),
    (lambda: pk.WidthPruning(round_to="measured"), "WidthPruning.round_to"),
    (lambda: pk.WidthPruning(1.5), "WidthPruning.ratio"),
])
def test_settings_mistakes_are_one_line(build, message):
    with pytest.raises(ConfigError, match=message) as error:
        build()
    assert "\n" not in str(error.value)


def test_no_data_or_no_heads_is_one_line_and_the_model_is_left_as_it_was():
    model = llama(layers=1)
    state = copy.deepcopy(model.state_dict())
    with pytest.raises(ConfigError, match="pass data=") as error:
        pk.prune(model, EXAMPLE, pk.WidthPruning(0.3))
    assert "\n" not in str(error.value)
    mlp = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
    with pytest.raises(PruneError, match="no attention heads") as error:
        pk.prune(mlp, torch.randn(2, 4), pk.WidthPruning(0.3), data=[torch.randn(3, 4)])
    assert "\n" not in str(error.value)
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())


def test_the_command_line_prunes_a_language_model_folder_with_it(tmp_path):
    from .test_cli_language_model import language_model_folder

    folder, text = language_model_folder(tmp_path)
    out = tmp_path / "out"
    result = CliRunner().invoke(app, [
        "prune", "--model", f"hf:{folder}", "--method", "width", "--params-target", "0.2",
        "--bias-compensation", "--data", f"text:{text}", "--no-latency", "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "WidthPruning" in result.output or "equivalent" in result.output
    restored = pk.load(transformers.AutoModelForCausalLM.from_pretrained(folder), out)
    assert sum(p.numel() for p in restored.parameters()) < sum(
        p.numel() for p in transformers.AutoModelForCausalLM.from_pretrained(folder).parameters())


def test_in_steps_a_parameters_target_is_reached_and_a_ratio_is_one_line():
    model, data = llama(), token_batches()
    before = sum(p.numel() for p in model.parameters())
    pk.iterative_prune(model, EXAMPLE, pk.WidthPruning(params_target=0.2), steps=2,
                       data=data, finetune=lambda *_: None)
    assert abs(1 - sum(p.numel() for p in model.parameters()) / before - 0.2) <= 0.02
    with pytest.raises(ConfigError, match="params_target= or flops_target=") as error:
        pk.iterative_prune(llama(), EXAMPLE, pk.WidthPruning(0.2), steps=2, data=data,
                           finetune=lambda *_: None)
    assert "\n" not in str(error.value)
