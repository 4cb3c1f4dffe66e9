"""``pk.allocate``: one parameters budget split across a decoder's dimensions by search. The
model passed in is left alone, every split is scored on held-out batches, only splits that
meet the budget can win, and the winner saves and reloads with its one plan."""

from __future__ import annotations

import copy
import math

import pytest
import torch

import prunekit as pk
from prunekit.workflows.allocation import splits

from .helpers import outputs

transformers = pytest.importorskip("transformers")


def decoder():
    torch.manual_seed(0)
    return transformers.LlamaForCausalLM(transformers.LlamaConfig(
        vocab_size=100, hidden_size=32, intermediate_size=64, num_hidden_layers=4,
        num_attention_heads=4, num_key_value_heads=2)).eval()


def batches(count, seed):
    generator = torch.Generator().manual_seed(seed)
    return [{"input_ids": torch.randint(0, 100, (2, 16), generator=generator)}
            for _ in range(count)]


def test_splits_cover_every_share_on_the_grid():
    found = splits(["a", "b", "c"], 0.25)
    assert len(found) == math.comb(4 + 2, 2)
    assert all(abs(sum(s.values()) - 1) < 1e-12 for s in found)
    assert {"a": 0.25, "b": 0.75, "c": 0.0} in found
    with pytest.raises(pk.ConfigError, match="step must divide 1"):
        splits(["a"], 0.3)


def test_the_best_split_is_the_lowest_held_out_loss_that_meets_the_budget(tmp_path):
    model = decoder()
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    data, held_out = batches(4, 1), batches(2, 2)
    dimensions = pk.decoder_dimensions()
    dimensions = {name: dimensions[name] for name in ("mlp", "depth")}
    allocation = pk.allocate(model, data[0], dimensions, params_target=0.2, data=data,
                             held_out=held_out, step=0.5)
    for name, parameter in model.named_parameters():  # each split pruned a copy
        assert torch.equal(parameter, before[name])
    assert len(allocation.rows) == 3
    eligible = [row for row in allocation.rows if not row.error]
    assert eligible and all(row.removed >= 0.2 - 0.02 for row in eligible)
    best = allocation.rows[allocation.best]
    assert best.score == min(row.score for row in eligible)
    total = sum(p.numel() for p in model.parameters())
    assert sum(p.numel() for p in allocation.model.parameters()) == round(
        total * (1 - best.removed))
    assert "best" in str(allocation) and allocation.methods
    # the winner's one plan replays every step on a fresh model
    restored = pk.load(decoder(), pk.save(allocation.model, tmp_path / "best", allocation.plan))
    for a, b in zip(outputs(allocation.model, held_out[0]), outputs(restored, held_out[0])):
        assert torch.equal(a, b)


def test_heads_and_neurons_ranked_together_are_a_dimension_after_the_rotation(tmp_path):
    """``"width"`` (FLAP's structure, its bias compensation) on a model the rotation has
    narrowed (the half-and-half split): every split meets the budget, and the winner's one
    plan replays on a fresh model."""
    model = decoder()
    data, held_out = batches(4, 1), batches(2, 2)
    dimensions = pk.decoder_dimensions()
    # 40%: the hidden size (32, kept in multiples of 8) can give its half of it
    allocation = pk.allocate(model, data[0], {d: dimensions[d] for d in ("hidden", "width")},
                             params_target=0.4, data=data, held_out=held_out, step=0.5)
    assert [row.error for row in allocation.rows] == ["", "", ""]
    assert all(row.removed >= 0.4 - 0.02 for row in allocation.rows)
    assert all(row.score > 0 for row in allocation.rows)  # each pruned copy differs
    restored = pk.load(decoder(), pk.save(allocation.model, tmp_path / "best", allocation.plan))
    for a, b in zip(outputs(allocation.model, held_out[0]), outputs(restored, held_out[0])):
        assert torch.equal(a, b)


def test_a_split_short_of_the_budget_cannot_win():
    model = decoder()

    def nothing(model, amount):
        return None  # a dimension that gives nothing: its splits fall short

    dimensions = {"nothing": nothing, "mlp": pk.decoder_dimensions()["mlp"]}
    allocation = pk.allocate(model, batches(1, 1)[0], dimensions, params_target=0.2,
                             data=batches(2, 1), held_out=batches(1, 2), step=0.5)
    by_share = {row.shares["nothing"]: row for row in allocation.rows}
    assert "short of the target" in by_share[1.0].error
    assert "short of the target" in by_share[0.5].error
    assert allocation.rows[allocation.best] is by_share[0.0]


@pytest.mark.parametrize("options, message", [
    ({"dimensions": {}}, "dimensions: give at least one"),
    ({"held_out": []}, "held_out: give at least one batch"),
    ({"params_target": 1.5}, "params_target"),
])
def test_mistakes_are_one_line(options, message):
    arguments = {"dimensions": pk.decoder_dimensions(), "params_target": 0.2,
                 "data": batches(1, 1), "held_out": batches(1, 2), **options}
    dimensions = arguments.pop("dimensions")
    with pytest.raises(pk.ConfigError, match=message):
        pk.allocate(copy.deepcopy(decoder()), batches(1, 1)[0], dimensions, **arguments)
