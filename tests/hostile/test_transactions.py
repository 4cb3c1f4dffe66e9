"""Promise: "on any error or interrupt the model is left exactly as it was", and "an
optimizer given to pk.prune trains the pruned model".

Attacks: an interrupt at every re-fit of reconstruction (channels and heads), every
optimizer in torch.optim stepping after a prune."""

from __future__ import annotations

import copy
import importlib

import pytest
import torch
import transformers
from torch import nn

import prunekit as pk

refit_module = importlib.import_module("prunekit.recover.reconstruct")

from ..zoo import resnet_basic

X = torch.randn(4, 3, 16, 16, generator=torch.Generator().manual_seed(0))


def snapshot(model):
    return {name: (t.data_ptr(), t.clone()) for name, t in model.state_dict().items()}


def assert_same(model, before):
    after = model.state_dict()
    assert after.keys() == before.keys()
    for name, (pointer, value) in before.items():
        assert after[name].data_ptr() == pointer, name
        assert torch.equal(after[name], value), f"{name} changed"


def _interrupt_at(monkeypatch, call: int):
    real = refit_module._least_squares
    count = {"n": 0}

    def interrupted(*args, **kwargs):
        count["n"] += 1
        if count["n"] == call:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(refit_module, "_least_squares", interrupted)
    return count


class InterruptedAfterRefits(pk.ChannelPruning):
    """Interrupted once every re-fit is written: in the config update that follows them."""

    def update_config(self, model):
        raise KeyboardInterrupt


class HeadsInterruptedAfterRefits(pk.HeadPruning):
    def update_config(self, model):
        raise KeyboardInterrupt


def _fits_made(method, model, inputs, data, monkeypatch):
    """How many least-squares fits one uninterrupted prune makes."""
    count = _interrupt_at(monkeypatch, 0)
    pk.prune(copy.deepcopy(model), inputs, method, data=data)
    monkeypatch.undo()
    return count["n"]


def _interrupted_everywhere(model, inputs, method, interrupted_after, monkeypatch) -> int:
    """Interrupt ``pk.prune`` before each re-fit in turn, then after the last (in the config
    update, ``interrupted_after``); the model must be as it was every time. Returns how
    many re-fits there were."""
    fits = _fits_made(method, model, inputs, [inputs], monkeypatch)
    before = snapshot(model)
    for call in range(1, fits + 1):
        _interrupt_at(monkeypatch, call)
        with pytest.raises(KeyboardInterrupt):
            pk.prune(model, inputs, method, data=[inputs])
        monkeypatch.undo()
        assert_same(model, before)
    with pytest.raises(KeyboardInterrupt):
        pk.prune(model, inputs, interrupted_after, data=[inputs])
    assert_same(model, before)
    return fits


def test_an_interrupt_at_any_refit_of_channels_leaves_the_model_as_it_was(monkeypatch):
    model = resnet_basic().eval()
    method = pk.ChannelPruning(0.5, "l2", reconstruct=True)
    assert _interrupted_everywhere(model, X, method,
                                   InterruptedAfterRefits(0.5, "l2", reconstruct=True),
                                   monkeypatch) >= 3


def test_an_interrupt_at_any_refit_of_heads_leaves_the_model_as_it_was(monkeypatch):
    torch.manual_seed(0)
    config = transformers.BertConfig(vocab_size=60, hidden_size=32, num_hidden_layers=2,
                                     num_attention_heads=4, intermediate_size=32)
    model = transformers.BertModel(config).eval()
    ids = {"input_ids": torch.randint(0, 60, (2, 8))}
    method = pk.HeadPruning(0.5, reconstruct=True)
    assert _interrupted_everywhere(model, ids, method,
                                   HeadsInterruptedAfterRefits(0.5, reconstruct=True),
                                   monkeypatch) >= 2


OPTIMIZERS = [name for name in dir(torch.optim)
              if isinstance(getattr(torch.optim, name), type)
              and issubclass(getattr(torch.optim, name), torch.optim.Optimizer)
              and name not in ("Optimizer", "SparseAdam")]  # SparseAdam: sparse gradients


@pytest.mark.parametrize("name", OPTIMIZERS)
def test_every_optimizer_steps_after_a_prune(name):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 16), nn.ReLU(),
                          nn.Linear(16, 4))
    x = torch.randn(6, 8)
    kwargs = {"lr": 1e-2}
    params = model.parameters()
    if name == "Muon":  # Muon takes matrices only
        params = [p for p in model.parameters() if p.dim() == 2]
    optimizer = getattr(torch.optim, name)(params, **kwargs)

    def closure():
        optimizer.zero_grad()
        loss = model(x).pow(2).mean()
        loss.backward()
        return loss

    for _ in range(2):
        optimizer.step(closure)
    pk.prune(model, x, pk.FilterPruning(0.5), optimizer=optimizer)
    assert model[0].out_features == 8
    before = [p.detach().clone() for p in model.parameters()]
    for _ in range(2):
        optimizer.step(closure)
    moved = [not torch.equal(a, p) for a, p in zip(before, model.parameters())]
    assert any(moved), "the optimizer no longer trains the pruned model"
