"""The channels' "reconstruction" criterion and the greedy elimination behind it, against
least-squares re-fits done the slow way."""

import copy

import torch
from torch import nn
from torch.nn import functional as F

import prunekit as pk
from prunekit.graph.dependency import DependencyGraph
from prunekit.importance.elimination import Fit, elimination_scores
from prunekit.importance.reconstruction import ChannelReconstruction

from .test_criteria import Tiny, batches, tiny


def refit_error(rows: torch.Tensor, wanted: torch.Tensor, columns: list[int]) -> float:
    """What a least-squares fit of ``wanted`` on ``rows[:, columns]`` and a bias misses."""
    design = torch.cat([rows[:, columns], torch.ones(len(rows), 1, dtype=rows.dtype)], dim=1)
    solution = torch.linalg.lstsq(design, wanted).solution
    return float((design @ solution - wanted).square().sum())


def test_elimination_removes_what_the_refit_misses_least_in_greedy_order():
    generator = torch.Generator().manual_seed(0)
    candidates, width, outputs = 10, 2, 5
    rows = torch.randn(600, candidates * width, generator=generator, dtype=torch.float64)
    rows[:, 6:8] = rows[:, 2:4] + 0.3 * rows[:, 6:8]  # candidate 3 half-duplicates candidate 1
    weights = torch.randn(outputs, candidates * width, generator=generator, dtype=torch.float64)
    bias = torch.randn(outputs, generator=generator, dtype=torch.float64)
    wanted = rows @ weights.T + bias
    design = torch.cat([rows, torch.ones(len(rows), 1, dtype=rows.dtype)], dim=1)
    variance = (wanted - wanted.mean(0)).square().sum()
    fit = Fit(design.T @ design, torch.arange(candidates * width).reshape(candidates, width),
              variance, weights=torch.cat([weights.T, bias[None]]))
    scores = elimination_scores([fit])

    left, order, expected = list(range(candidates)), [], []
    while left:  # the slow way: re-fit without each remaining candidate, drop the cheapest
        errors = {c: refit_error(rows, wanted, [k for o in left if o != c
                                                for k in range(o * width, o * width + width)])
                  for c in left}
        cheapest = min(errors, key=errors.get)
        left.remove(cheapest)
        order.append(cheapest)
        expected.append(min(errors[cheapest] / float(variance), 1.0))
    assert scores.argsort().tolist() == order
    assert torch.allclose(scores[order], torch.tensor(expected, dtype=torch.float64), atol=1e-3)


def test_channel_scores_are_what_refitting_each_consumer_misses():
    model = tiny()
    data = batches()
    graph = DependencyGraph(model, data[0][0][:2])
    groups = pk.ChannelPruning().candidates(graph)
    scores = ChannelReconstruction().score_groups(graph, groups, data)
    assert len(scores) == 2  # conv1's channels (read by conv2), conv2's (read by fc)

    inputs, outputs = [], []

    def read(_module, args, output):
        inputs.append(args[0])
        outputs.append(output)

    handle = model.conv2.register_forward_hook(read)
    with torch.no_grad():
        for x, _ in data:
            model(x)
    handle.remove()
    # every position of every batch: fewer than the rows the criterion samples
    rows = torch.cat([F.unfold(x, 3, padding=1).transpose(1, 2).reshape(-1, 8 * 9)
                      for x in inputs]).double()
    wanted = torch.cat([y.permute(0, 2, 3, 1).reshape(-1, 6) for y in outputs]).double()
    variance = float((wanted - wanted.mean(0)).square().sum())
    errors = [refit_error(rows, wanted, [k for k in range(72) if k // 9 != c]) / variance
              for c in range(8)]
    group = next(g for g in groups if any(m.name == "conv1.weight" for m in g.members))
    first = int(scores[group.axis].argmin())
    assert first == min(range(8), key=errors.__getitem__)
    assert abs(float(scores[group.axis][first]) - errors[first]) < 1e-3


def duplicated() -> Tiny:
    """conv1's channel 5 copies channel 2 (filter, bias and norm): read by conv2's largest
    weights, and redundant."""
    model = tiny()
    with torch.no_grad():
        model.conv2.weight[:, [2, 5]] *= 5
        for tensor in (model.conv1.weight, model.conv1.bias, model.bn1.weight, model.bn1.bias,
                       model.bn1.running_mean, model.bn1.running_var):
            tensor[5] = tensor[2]
    return model


def test_a_duplicated_channel_goes_and_the_refit_makes_its_loss_good():
    x, fresh = torch.rand(2, 3, 8, 8), torch.rand(16, 3, 8, 8)
    errors = {}
    for criterion in ("reconstruction", "l1"):
        model = duplicated()
        original = copy.deepcopy(model)
        result = pk.prune(model, x, pk.ChannelPruning(0.125, criterion, reconstruct=True),
                          data=batches())
        removed = set(range(8)) - set(result.plan.tensors["conv1.weight"][0])
        with torch.no_grad():
            errors[criterion] = float((model(fresh) - original(fresh)).abs().max())
        if criterion == "reconstruction":
            assert removed in ({2}, {5})
        else:
            assert removed.isdisjoint({2, 5})  # the largest weights: a weight criterion keeps both
    assert errors["reconstruction"] < 1e-4 < errors["l1"]


def test_a_layer_too_wide_to_fit_is_left_to_the_weights(monkeypatch):
    from prunekit.importance import reconstruction

    monkeypatch.setattr(reconstruction, "MAX_COLUMNS", 8 * 9 - 1)  # conv2 reads 72 columns
    model = tiny()
    data = batches()
    graph = DependencyGraph(model, data[0][0][:2])
    groups = pk.ChannelPruning().candidates(graph)
    scores = ChannelReconstruction().score_groups(graph, groups, data)
    conv1 = next(g for g in groups if any(m.name == "conv1.weight" for m in g.members))
    assert conv1.axis not in scores and len(scores) == 1
    result = pk.prune(model, data[0][0][:2], pk.ChannelPruning(0.5, "reconstruction"), data=data)
    assert result.report.ok and "conv1.weight" in result.plan.tensors


def test_scoring_leaves_no_hook_and_no_change_behind():
    model = duplicated()
    before = copy.deepcopy(model.state_dict())
    graph = DependencyGraph(model, torch.rand(2, 3, 8, 8))
    ChannelReconstruction().score_groups(graph, pk.ChannelPruning().candidates(graph), batches())
    for module in model.modules():
        assert not module._forward_hooks and not module._forward_pre_hooks
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_a_linear_layer_without_bias_is_fitted_without_one():
    model = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 3, bias=False)).eval()
    data = [torch.randn(32, 6) for _ in range(2)]
    graph = DependencyGraph(model, data[0][:2])
    groups = pk.ChannelPruning().candidates(graph)
    (scores,) = ChannelReconstruction().score_groups(graph, groups, data).values()
    with torch.no_grad():
        hidden = torch.cat([model[1](model[0](x)) for x in data]).double()
    wanted = hidden @ model[2].weight.double().T
    variance = float((wanted - wanted.mean(0)).square().sum())
    first = int(scores.argmin())
    kept = [c for c in range(8) if c != first]
    solution = torch.linalg.lstsq(hidden[:, kept], wanted).solution
    missed = float((hidden[:, kept] @ solution - wanted).square().sum()) / variance
    assert abs(float(scores[first]) - missed) < 1e-3


class Sequence(nn.Module):
    def __init__(self):
        super().__init__()
        self.embed = nn.Linear(5, 8)
        self.rnn = nn.LSTM(8, 6, batch_first=True)
        self.head = nn.Linear(6, 3)

    def forward(self, x):
        out, _ = self.rnn(torch.relu(self.embed(x)))
        return self.head(out)


def test_a_recurrent_layer_counts_by_its_input_weights_and_its_hidden_units_by_weights():
    torch.manual_seed(0)
    model = Sequence().eval()
    data = [torch.randn(4, 7, 5) for _ in range(3)]
    graph = DependencyGraph(model, data[0][:2])
    groups = pk.ChannelPruning().candidates(graph)
    scores = ChannelReconstruction().score_groups(graph, groups, data)
    fed = next(g for g in groups if any(m.name == "embed.weight" for m in g.members))
    hidden = next(g for g in groups if any(m.name == "head.weight" for m in g.members))
    # the hidden units also feed back through weight_hh, which the re-fit leaves as pruned
    assert hidden.axis not in scores and list(scores) == [fed.axis]

    with torch.no_grad():  # what reconstruct fits: each step's W_ih x + b_ih
        rows = torch.cat([torch.relu(model.embed(x)).reshape(-1, 8) for x in data]).double()
    wanted = rows @ model.rnn.weight_ih_l0.double().T + model.rnn.bias_ih_l0.double()
    variance = float((wanted - wanted.mean(0)).square().sum())
    errors = [refit_error(rows, wanted, [k for k in range(8) if k != c]) / variance
              for c in range(8)]
    first = int(scores[fed.axis].argmin())
    assert first == min(range(8), key=errors.__getitem__)
    assert abs(float(scores[fed.axis][first]) - errors[first]) < 1e-3
    result = pk.prune(model, data[0][:2], pk.ChannelPruning(0.5, "reconstruction",
                                                            reconstruct=True), data=data)
    assert result.report.ok and "rnn.weight_hh_l0" in result.plan.tensors
