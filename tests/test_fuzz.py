"""Fuzzing: random architectures (``fuzz_models``) must each prune or be refused cleanly.

For every seed: ``pk.prune`` either succeeds or raises a ``PruneError`` leaving the model
bit-identical; a pruned model matches the masked original on fresh inputs (not the ones it
was checked on) in every output, keeps every output's shape, and reloads from disk with
identical outputs. Run one seed with ``pytest tests/test_fuzz.py -k "seed-17"``, and other
seeds with ``PRUNEKIT_FUZZ_FIRST=200 PRUNEKIT_FUZZ_SEEDS=1000``.
"""

from __future__ import annotations

import copy
import os
import random

import pytest
import torch

import prunekit as pk
from prunekit.checks.verify import mask
from prunekit.core.calls import call_model, named_tensors

from .fuzz_models import RandomNet

SEEDS = int(os.environ.get("PRUNEKIT_FUZZ_SEEDS", "200"))
FIRST = int(os.environ.get("PRUNEKIT_FUZZ_FIRST", "0"))  # new seeds: PRUNEKIT_FUZZ_FIRST=200


def _outputs(model, x):
    model.eval()
    with torch.no_grad():
        return {name: t for name, t in named_tensors(call_model(model, x))}


def _method(seed: int) -> pk.PruningMethod:
    rng = random.Random(seed * 7919)
    kind = rng.choice([pk.FilterPruning, pk.FilterPruning, pk.ChannelPruning])
    ratio = rng.choice([0.25, 0.4, 0.5, 0.6])
    criterion = rng.choice(["l1", "l2", "random"])
    return kind(ratio, criterion, round_to=rng.choice([1, 1, 2]),
                global_ranking=rng.random() < 0.25)


@pytest.mark.parametrize("seed", range(FIRST, FIRST + SEEDS), ids=lambda s: f"seed-{s}")
def test_a_random_network_prunes_or_is_refused_cleanly(seed, tmp_path):
    torch.manual_seed(seed)
    original = RandomNet(seed).eval()
    model = copy.deepcopy(original)
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(2, 3, 8, 8, generator=generator)
    fresh = torch.randn(3, 3, 8, 8, generator=generator)  # another batch size, other values
    method = _method(seed)
    where = f"seed {seed}: {method.summary()} on\n{original}"
    try:
        result = pk.prune(model, x, method)
    except pk.PruneError:
        after = model.state_dict()
        assert all(torch.equal(v, after[k]) for k, v in original.state_dict().items()), where
        assert repr(model) == repr(original), where
        return

    # every group the engine proposed was exact: none had to be left out by the check
    assert not result.skipped, f"{where}\n" + "\n".join(f"{s.group}: {s.reason}"
                                                         for s in result.skipped)
    expected = _outputs(mask(copy.deepcopy(original), result.plan), fresh)
    actual = _outputs(model, fresh)
    assert expected.keys() == actual.keys(), where
    for name, e in expected.items():
        a = actual[name]
        assert a.shape == e.shape, f"{where}\n{name}: {tuple(e.shape)} -> {tuple(a.shape)}"
        scale = e.abs().max().item() or 1.0
        difference = (a - e).abs().max().item() / scale
        assert difference <= 1e-4, f"{where}\n{name}: masked vs pruned differ by {difference:.3g}"

    pk.save(model, tmp_path / "saved", result.plan)
    restored = pk.load(copy.deepcopy(original), tmp_path / "saved")
    for name, t in _outputs(restored, fresh).items():
        assert torch.equal(t, actual[name]), f"{where}\n{name} changed on save -> load"


def test_a_head_count_equal_to_the_batch_size_is_still_the_head_count():
    """``reshape(b, tokens, self.heads, -1)`` with ``b == self.heads == 2``: the attribute
    must follow the heads, not the batch (it did not, and removing a head was refused)."""
    torch.manual_seed(0)
    for seed in range(100):
        net = RandomNet(seed)
        attention = [b for b in net.blocks if getattr(b, "custom", False) and b.heads == 2]
        if attention:
            break
    x = torch.randn(2, 3, 8, 8)
    result = pk.prune(net.eval(), x, pk.FilterPruning(0.5))
    assert not result.skipped, [s.reason for s in result.skipped]
    name = next(n for n, m in net.named_modules() if m is attention[0])
    assert result.plan.attributes[name]["heads"] == 1
