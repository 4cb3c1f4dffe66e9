"""Attention-head pruning on small randomly initialised Hugging Face encoders."""

import copy

import pytest
import torch
import transformers

import prunekit as pk

from .helpers import check_pruned, outputs

transformers.logging.set_verbosity_error()


def bert():
    torch.manual_seed(0)
    config = transformers.BertConfig(hidden_size=64, num_attention_heads=4, intermediate_size=128,
                                     num_hidden_layers=2, vocab_size=100)
    return transformers.BertModel(config).eval()


def roberta():
    torch.manual_seed(0)
    config = transformers.RobertaConfig(hidden_size=64, num_attention_heads=4,
                                        intermediate_size=128, num_hidden_layers=2,
                                        vocab_size=100)
    return transformers.RobertaModel(config).eval()


def distilbert():
    torch.manual_seed(0)
    config = transformers.DistilBertConfig(dim=64, n_heads=4, hidden_dim=128, n_layers=2,
                                           vocab_size=100)
    return transformers.DistilBertModel(config).eval()


INPUTS = {"input_ids": torch.randint(0, 100, (2, 8), generator=torch.Generator().manual_seed(0))}
MODELS = {"bert": (bert, "encoder.layer.{}.attention.self", "num_attention_heads"),
          "roberta": (roberta, "encoder.layer.{}.attention.self", "num_attention_heads"),
          "distilbert": (distilbert, "transformer.layer.{}.attention", "n_heads")}


@pytest.mark.parametrize("name", MODELS)
def test_head_pruning_removes_whole_heads_and_updates_counts(name, tmp_path):
    build, attention, count = MODELS[name]
    result = check_pruned(build(), INPUTS, pk.HeadPruning(0.5, "l1"), tmp_path)
    for layer in range(2):
        assert result.plan.attributes[attention.format(layer)][count] == 2
    pruned = copy.deepcopy(build())
    three_of_four = pk.prune(pruned, INPUTS, pk.HeadPruning(0.25, "l2"))
    module = pruned.get_submodule(attention.format(0))
    assert getattr(module, count) == 3
    projections = [p for p in module.parameters() if p.dim() == 2]
    # q/k/v keep 3 heads × 16 rows; an output projection inside the module keeps 48 columns
    assert projections and all(sorted(p.shape) == [48, 64] for p in projections)
    assert pk.verify(build(), INPUTS, three_of_four.plan).ok


def test_dead_heads_are_the_ones_magnitude_removes_and_removing_them_changes_nothing():
    model = bert()
    attention = model.encoder.layer[0].attention
    head = attention.self.attention_head_size
    with torch.no_grad():
        for dead in (1, 3):
            rows = slice(dead * head, (dead + 1) * head)
            for projection in (attention.self.query, attention.self.key, attention.self.value):
                projection.weight[rows] = 0
                projection.bias[rows] = 0
            attention.output.dense.weight[:, rows] = 0
    original = copy.deepcopy(model)
    only_layer_0 = {"encoder.layer.0.attention.self.query": 0.5}
    result = pk.prune(model, INPUTS, pk.HeadPruning(0.0, "l1", overrides=only_layer_0))
    assert list(result.plan.attributes) == ["encoder.layer.0.attention.self"]
    kept_rows = result.plan.tensors["encoder.layer.0.attention.self.query.weight"][0]
    assert kept_rows == list(range(0, head)) + list(range(2 * head, 3 * head))
    for a, b in zip(outputs(model, INPUTS), outputs(original, INPUTS)):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


def test_a_model_without_findable_heads_is_a_clear_error():
    model = torch.nn.Sequential(torch.nn.Linear(8, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2))
    with pytest.raises(pk.PruneError, match="no attention heads"):
        pk.prune(model, torch.randn(1, 8), pk.HeadPruning(0.5))
