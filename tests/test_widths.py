"""Fast widths: layer calls found from the graph, timed per shape, cached, and the widest
width that runs as fast as the narrowest chosen."""

import json

import pytest
import torch
from torch import nn

from prunekit.graph.dependency import DependencyGraph
from prunekit.selection import widths
from prunekit.selection.widths import LayerCall, WidthTable, layer_calls


def convnet():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
                          nn.Conv2d(16, 16, 3, padding=1, groups=16), nn.ReLU(),
                          nn.Conv2d(16, 24, 1), nn.ReLU(), nn.Flatten(), nn.Linear(24 * 64, 5))
    return model.eval(), torch.randn(2, 3, 8, 8)


def calls_by_group():
    model, x = convnet()
    graph = DependencyGraph(model, x)
    calls = layer_calls(model, x, graph, graph.groups)
    return {graph.groups[i].size: calls[g.axis] for i, g in enumerate(graph.groups)}


def test_each_group_lists_the_calls_whose_channels_it_sets():
    by_size = calls_by_group()
    first = by_size[16]  # conv0's filters, the depthwise conv, conv5's input channels
    assert [(c.kind, c.dim, c.weight_shape) for c in first] == [
        ("conv2d", "out", (16, 3, 3, 3)), ("conv2d", "both", (16, 1, 3, 3)),
        ("conv2d", "in", (24, 16, 1, 1))]
    assert first[0].input_shape == (2, 3, 8, 8) and first[1].groups == 16
    # conv5's filters feed a flatten: the linear's 1536 inputs are not 24 channels, so only
    # the convolution is timed for that group
    assert [(c.kind, c.dim) for c in by_size[24]] == [("conv2d", "out")]


@pytest.mark.parametrize("call, width, weight, output", [
    (LayerCall("conv2d", (16, 3, 3, 3), (2, 3, 8, 8), "out", (1, 1), (1, 1), (1, 1)), 12,
     (12, 3, 3, 3), (2, 12, 8, 8)),
    (LayerCall("conv2d", (24, 16, 1, 1), (2, 16, 8, 8), "in", (1, 1), (0, 0), (1, 1)), 12,
     (24, 12, 1, 1), (2, 24, 8, 8)),
    (LayerCall("conv2d", (16, 1, 3, 3), (2, 16, 8, 8), "both", (2, 2), (1, 1), (1, 1), 16),
     12, (12, 1, 3, 3), (2, 12, 4, 4)),
    (LayerCall("linear", (64, 32), (5, 7, 32), "in"), 20, (64, 20), (5, 7, 64)),
    (LayerCall("linear", (64, 32), (5, 32), "out"), 20, (20, 32), (5, 20)),
])
def test_a_call_is_rebuilt_at_any_width(call, width, weight, output):
    layer, x = call.at(width)
    assert tuple(layer.weight.shape) == weight
    assert tuple(layer(x).shape) == output


class Staircase(WidthTable):
    """Times from a formula instead of the clock: a step every 8 channels."""

    def milliseconds(self, call, widths_):
        return {w: 1.0 + 0.2 * ((w - 1) // 8) for w in widths_}


@pytest.mark.parametrize("wanted, size, chosen", [
    (41, 256, 48),  # 41 to 48 cost the same: keep 48
    (40, 256, 40),  # 41 would cost a step more
    (45, 46, 46),  # never more than the group has
    (200, 200, 200),
])
def test_the_widest_width_as_fast_as_the_fastest_is_kept(tmp_path, wanted, size, chosen):
    table = Staircase(tmp_path / "table.json")
    call = LayerCall("linear", (size, 32), (4, 32), "out")
    assert table.fast_width([call], wanted, size) == chosen


def test_times_are_measured_once_then_read_from_the_file(tmp_path):
    path = tmp_path / "table.json"
    call = LayerCall("linear", (64, 32), (8, 32), "out")
    table = WidthTable(path)
    times = table.milliseconds(call, [20, 24, 28])
    assert set(times) == {20, 24, 28} and all(ms > 0 for ms in times.values())
    assert table.measured == {call.key()}
    table.save()
    saved = json.loads(path.read_text())
    assert saved[widths.machine()][call.key()].keys() == {"20", "24", "28"}

    again = WidthTable(path)
    assert again.milliseconds(call, [20, 24, 28]) == times
    assert again.measured == set()  # nothing timed: all from the file
    again.milliseconds(call, [32])
    assert again.measured == {call.key()}


def test_an_unreadable_table_is_started_afresh(tmp_path):
    path = tmp_path / "table.json"
    path.write_text("{not json")
    table = WidthTable(path)
    assert table.times == {}
    table.milliseconds(LayerCall("linear", (8, 8), (1, 8), "in"), [4])
    table.save()
    assert json.loads(path.read_text())  # replaced by a readable one


def test_the_table_lives_where_the_environment_says(tmp_path, monkeypatch):
    monkeypatch.setenv(widths.CACHE_ENV, str(tmp_path))
    assert WidthTable().path == tmp_path / "fast_widths.json"


def test_measured_widths_are_the_tables_choice_at_a_plain_ratio(tmp_path, monkeypatch):
    import prunekit as pk
    monkeypatch.setenv(widths.CACHE_ENV, str(tmp_path))
    monkeypatch.setattr(WidthTable, "milliseconds", Staircase.milliseconds)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(32, 100), nn.ReLU(), nn.Linear(100, 4)).eval()
    result = pk.prune(model, torch.randn(3, 32), pk.FilterPruning(0.59, round_to="measured"))
    # the ratio asks for 41 of 100; the staircase costs the same up to 48
    assert model[0].out_features == 48
    assert result.report.ok


@pytest.mark.parametrize("round_to", [0, 2.5, "fast", True])
def test_round_to_is_a_positive_count_or_measured(round_to):
    import prunekit as pk
    with pytest.raises(pk.ConfigError, match="round_to must be a positive integer or 'measured'"):
        pk.FilterPruning(round_to=round_to)


def test_the_command_line_takes_measured_widths(tmp_path):
    from typer.testing import CliRunner

    from prunekit.cli import commands as cli
    runner = CliRunner()
    bad = runner.invoke(cli.app, ["prune", "--model", "torchvision:resnet18", "--input-shape",
                                  "1,3,32,32", "--round-to", "fast", "--out", str(tmp_path / "a")])
    assert bad.exit_code == 2 and "--round-to 'fast': give a number of channels" in bad.output
    assert not (tmp_path / "a").exists()
    good = runner.invoke(cli.app, ["prune", "--model", "torchvision:resnet18", "--input-shape",
                                   "1,3,32,32", "--round-to", "measured", "--no-latency",
                                   "--out", str(tmp_path / "b")])
    assert good.exit_code == 0, good.output
