"""Channel pruning with least-squares reconstruction of the layers that lost inputs."""

import copy

import pytest
import torch
from torch import nn

import prunekit as pk


def net():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(),
                         nn.Conv2d(16, 16, 3, padding=1), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 5)).eval()


def calibration():
    generator = torch.Generator().manual_seed(3)
    base = torch.randn(32, 3, 10, 10, generator=generator)
    return [base[i:i + 8] for i in range(0, 32, 8)]


def output_error(pruned, original, batches) -> float:
    with torch.no_grad():
        return sum(float((pruned(x) - original(x)).pow(2).mean()) for x in batches)


def test_reconstruction_brings_the_output_closer_than_plain_channel_pruning():
    original, data = net(), calibration()
    plain, rebuilt = copy.deepcopy(original), copy.deepcopy(original)
    x = data[0][:1]
    pk.prune(plain, x, pk.ChannelPruning(0.5, "l2"))
    result = pk.prune(rebuilt, x, pk.ChannelPruning(0.5, "l2", reconstruct=True), data=data)
    # same channels removed, different weights in the layers that lost inputs
    assert [p.shape for p in plain.parameters()] == [p.shape for p in rebuilt.parameters()]
    assert not torch.equal(plain[2].weight, rebuilt[2].weight)
    assert torch.equal(plain[0].weight, rebuilt[0].weight)  # producers are not re-fitted
    held_out = [torch.randn(8, 3, 10, 10, generator=torch.Generator().manual_seed(9))]
    assert output_error(rebuilt, original, held_out) < 0.5 * output_error(plain, original, held_out)
    assert result.after.params == sum(p.numel() for p in rebuilt.parameters())


@pytest.mark.parametrize("conv", [
    nn.Conv2d(3, 5, 3, padding=1),
    nn.Conv2d(3, 5, (3, 2), stride=(2, 1), dilation=(1, 2), padding=(2, 1)),
    nn.Conv2d(3, 5, 4, padding="same"),
    nn.Conv2d(3, 5, 3, padding=1, padding_mode="reflect")],
    ids=["padded", "strided and dilated", "same, even kernel", "reflect"])
@pytest.mark.parametrize("cap", [10**6, 50], ids=["every position", "drawn positions"])
def test_a_convolutions_rows_are_its_patches_and_outputs(conv, cap, monkeypatch):
    """Patches are gathered at the drawn output positions only; they must be the rows the
    whole unfolding would give (same rows, same order), and reproduce the convolution."""
    import importlib

    from torch.nn import functional as F

    module = importlib.import_module("prunekit.recover.reconstruct")
    rows_of = importlib.import_module("prunekit.importance.refit_rows")

    monkeypatch.setattr(module, "MAX_ROWS", cap)
    inputs = [torch.randn(2, 3, 9, 11), torch.randn(1, 3, 9, 11)]
    with torch.no_grad():
        outputs = [conv(x) for x in inputs]
        rows, wanted = module._conv_rows(conv, inputs, outputs, torch.Generator().manual_seed(0))
        mode = "constant" if conv.padding_mode == "zeros" else conv.padding_mode
        unfolded = torch.cat([F.unfold(F.pad(x, rows_of._paddings(conv), mode=mode),
                                       conv.kernel_size, conv.dilation, 0, conv.stride)
                              .transpose(1, 2).flatten(0, 1) for x in inputs])
        every = torch.cat([y.flatten(2).transpose(1, 2).flatten(0, 1) for y in outputs])
        assert len(rows) == min(cap, len(every))
        if len(every) > cap:
            pick = torch.randperm(len(every), generator=torch.Generator().manual_seed(0))[:cap]
            unfolded, every = unfolded[pick], every[pick]
        assert torch.equal(rows, unfolded) and torch.equal(wanted, every)
        refitted = rows @ conv.weight.flatten(1).T + conv.bias
        torch.testing.assert_close(refitted, wanted, atol=1e-5, rtol=1e-5)


def test_capture_passes_stop_at_the_layer_and_fit_the_same_weights(monkeypatch):
    """Each layer's inputs are read by a forward pass that ends at that layer; running every
    pass to the end must fit exactly the same weights."""
    import importlib

    module = importlib.import_module("prunekit.recover.reconstruct")
    data = calibration()

    def pruned_with_reconstruction():
        model = net()
        last_calls = []
        model[-1].register_forward_hook(lambda *_: last_calls.append(1))
        pk.prune(model, data[0][:1], pk.ChannelPruning(0.5, "l2", reconstruct=True), data=data)
        return model, len(last_calls)

    stopped, stopped_calls = pruned_with_reconstruction()
    consumers = module._consumers

    def called_twice(*args):  # a layer called more than once is read by whole passes
        order, calls = consumers(*args)
        return order, {name: 2 for name in calls}

    monkeypatch.setattr(module, "_consumers", called_twice)
    whole, whole_calls = pruned_with_reconstruction()
    for a, b in zip(stopped.parameters(), whole.parameters()):
        assert torch.equal(a, b)
    # the last layer is re-fitted too (its pass reaches it); no earlier layer's pass does
    assert whole_calls - stopped_calls == len(data) * 2


@pytest.mark.parametrize("whole_passes", [False, True], ids=["passes stop", "whole passes"])
def test_a_layer_is_fitted_to_its_own_output_even_when_an_in_place_relu_follows(
        whole_passes, monkeypatch):
    """An in-place ReLU after a convolution overwrites the tensor the convolution returned;
    the re-fit must read the convolution's output, not the clipped one: a model with in-place
    ReLUs is re-fitted exactly as the same model without them."""
    import importlib

    module = importlib.import_module("prunekit.recover.reconstruct")
    if whole_passes:
        consumers = module._consumers
        monkeypatch.setattr(module, "_consumers", lambda *args: (
            consumers(*args)[0], {name: 2 for name in consumers(*args)[1]}))
    data = calibration()

    def refitted(inplace: bool) -> nn.Module:
        torch.manual_seed(0)
        model = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(inplace),
                              nn.Conv2d(16, 16, 3, padding=1), nn.ReLU(inplace),
                              nn.Conv2d(16, 4, 3, padding=1)).eval()
        pk.prune(model, data[0][:1], pk.ChannelPruning(0.5, "l2", reconstruct=True), data=data)
        return model

    for a, b in zip(refitted(True).parameters(), refitted(False).parameters()):
        assert torch.equal(a, b)


def test_reconstruction_needs_data():
    model = net()
    with pytest.raises(pk.ConfigError, match="reconstruct=True.*data="):
        pk.prune(model, calibration()[0], pk.ChannelPruning(0.5, reconstruct=True))


class TokenMLP(nn.Module):
    """Linear layers on (batch, tokens, channels): their channels are the last dim."""

    def __init__(self):
        super().__init__()
        self.up, self.mid, self.down = nn.Linear(8, 32), nn.Linear(32, 32), nn.Linear(32, 4)

    def forward(self, x):
        return self.down(torch.relu(self.mid(torch.relu(self.up(x)))))


def test_reconstruction_of_linear_layers_on_token_sequences():
    """A re-fitted Linear that also lost outputs is fitted to its kept outputs, picked along
    the last dim (it used to pick along dim 1, the tokens, and fail or fit the wrong ones)."""
    torch.manual_seed(0)
    original = TokenMLP().eval()
    data = [torch.randn(4, 40, 8, generator=torch.Generator().manual_seed(i)) for i in range(4)]
    plain, rebuilt = copy.deepcopy(original), copy.deepcopy(original)
    pk.prune(plain, data[0][:1], pk.ChannelPruning(0.5, "l2"))
    pk.prune(rebuilt, data[0][:1], pk.ChannelPruning(0.5, "l2", reconstruct=True), data=data)
    assert rebuilt.mid.weight.shape == (16, 16)
    held_out = [torch.randn(4, 40, 8, generator=torch.Generator().manual_seed(9))]
    assert output_error(rebuilt, original, held_out) < 0.5 * output_error(plain, original, held_out)


class Recurrent(nn.Module):
    """Features into a recurrent layer, its output sequence into a head. The projection's last
    six features are a tenth of its first six, and the recurrent layer reads them through
    weights of half the norm, so an L2 channel criterion drops exactly those and their share can be
    carried by their twins: a re-fit of the input weights can then be exact."""

    def __init__(self, kind: type[nn.RNNBase], layers: int = 1):
        super().__init__()
        torch.manual_seed(0)
        self.proj = nn.Linear(6, 12)
        self.rnn = kind(12, 16, num_layers=layers, batch_first=True, bidirectional=True)
        self.head = nn.Linear(32, 3)
        with torch.no_grad():
            self.proj.weight[6:] = 0.1 * self.proj.weight[:6]
            self.proj.bias[6:] = 0.1 * self.proj.bias[:6]
            for name, weight in self.rnn.named_parameters():
                if name.startswith("weight_ih_l0"):
                    weight[:, 6:] *= 0.5

    def forward(self, x):
        return self.head(self.rnn(self.proj(x))[0])


class InputsOnly(pk.ChannelPruning):
    """Only the projection's features: the recurrent layer keeps its hidden size."""

    def candidates(self, graph):
        return [g for g in super().candidates(graph) if "proj" in g.modules()]


def sequences(seed: int, count: int = 4):
    generator = torch.Generator().manual_seed(seed)
    return [torch.randn(8, 20, 6, generator=generator) for _ in range(count)]


def relative_error(pruned, original, batches) -> float:
    with torch.no_grad():
        return sum(float((pruned(x) - original(x)).pow(2).mean() / original(x).pow(2).mean())
                   for x in batches) / len(batches)


@pytest.mark.parametrize("kind", [nn.LSTM, nn.GRU, nn.RNN])
def test_recurrent_input_weights_absorb_the_inputs_they_lost(kind):
    original, data, held_out = Recurrent(kind).eval(), sequences(1), sequences(9, 2)
    plain, rebuilt = copy.deepcopy(original), copy.deepcopy(original)
    pk.prune(plain, data[0][:1], InputsOnly(0.5, "l2"))
    pk.prune(rebuilt, data[0][:1], InputsOnly(0.5, "l2", reconstruct=True), data=data)
    assert rebuilt.rnn.weight_ih_l0.shape[1] == 6 and rebuilt.rnn.hidden_size == 16
    # the lost features were a tenth of the kept ones: the fit carries them exactly
    assert relative_error(rebuilt, original, held_out) < 1e-6
    assert relative_error(plain, original, held_out) > 1e-4
    assert torch.equal(plain.rnn.weight_hh_l0, rebuilt.rnn.weight_hh_l0)  # recurrent: as pruned


@pytest.mark.parametrize("kind", [nn.LSTM, nn.GRU, nn.RNN])
def test_recurrent_layers_that_lost_hidden_units_come_closer(kind):
    original, data, held_out = Recurrent(kind).eval(), sequences(1), sequences(9, 2)
    plain, rebuilt = copy.deepcopy(original), copy.deepcopy(original)
    pk.prune(plain, data[0][:1], pk.ChannelPruning(0.5, "l2"))
    pk.prune(rebuilt, data[0][:1], pk.ChannelPruning(0.5, "l2", reconstruct=True), data=data)
    assert rebuilt.rnn.weight_hh_l0.shape[1] == 8  # the hidden size was pruned too
    assert not torch.equal(plain.rnn.weight_ih_l0_reverse, rebuilt.rnn.weight_ih_l0_reverse)
    assert (relative_error(rebuilt, original, held_out)
            < 0.5 * relative_error(plain, original, held_out))


def test_stacked_recurrent_layers_are_left_as_pruned():
    """A second layer's input is inside the module, out of reach of a hook: no re-fit."""
    original, data = Recurrent(nn.LSTM, layers=2).eval(), sequences(1)
    plain, rebuilt = copy.deepcopy(original), copy.deepcopy(original)
    pk.prune(plain, data[0][:1], pk.ChannelPruning(0.5, "l2"))
    pk.prune(rebuilt, data[0][:1], pk.ChannelPruning(0.5, "l2", reconstruct=True), data=data)
    for (name, a), b in zip(plain.rnn.named_parameters(), rebuilt.rnn.parameters()):
        assert torch.equal(a, b), name
    assert not torch.equal(plain.head.weight, rebuilt.head.weight)  # the head is re-fitted
