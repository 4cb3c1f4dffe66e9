"""Latency: models timed interleaved, with their spread, and a verdict that can say "noise"."""

import time

import pytest
import torch
import torchvision
from torch import nn
from typer.testing import CliRunner

import prunekit as pk
from prunekit.cli.app import console as cli_console
from prunekit.cli.commands import app as cli_app
from prunekit.errors import ConfigError
from prunekit.measure.latency import (
    Speedup,
    Timing,
    batch_size,
    fixed_threads,
    median_interval,
    time_models,
)


class Sleeper(nn.Module):
    """A model whose forward pass takes a known time, and that logs when it ran."""

    def __init__(self, name: str, seconds: float, log: list[str]):
        super().__init__()
        self.name, self.seconds, self.log = name, seconds, log

    def forward(self, x):
        self.log.append(self.name)
        time.sleep(self.seconds)
        return x


def test_models_run_in_alternating_order_after_a_warm_up():
    log: list[str] = []
    a, b = Sleeper("a", 0.002, log), Sleeper("b", 0.002, log)
    samples = time_models([a, b], torch.zeros(1), warmup=2, min_rounds=4, max_rounds=4,
                          min_time=0)
    assert log == ["a", "a", "b", "b"] + ["a", "b", "b", "a"] * 2
    assert [len(s) for s in samples] == [4, 4]


def test_a_slower_model_is_measured_slower_and_the_verdict_says_by_how_much():
    log: list[str] = []
    slow, fast = Sleeper("slow", 0.006, log), Sleeper("fast", 0.002, log)
    speed = pk.compare_latency(slow, fast, torch.zeros(3, 1), min_time=0.2)
    assert speed.after.median_ms < speed.before.median_ms
    assert speed.low > 1.5 and not speed.within_noise  # 3× by construction
    assert speed.batch == 3 and speed.threads == torch.get_num_threads()
    assert "faster" in speed.describe() and "interleaved rounds" in str(speed)


def test_rounds_that_cannot_tell_two_models_apart_say_so():
    before = Timing(10.0, 9.0, 11.0, 20)
    speed = Speedup(before, before, speedup=1.01, low=0.97, high=1.06, threads=2, batch=1)
    assert speed.within_noise
    assert speed.describe().startswith("no measurable difference")
    slower = Speedup(before, before, speedup=0.5, low=0.45, high=0.55, threads=2, batch=1)
    assert not slower.within_noise and slower.describe().startswith("2.00× slower")
    assert slower.change == pytest.approx(1.0)


def test_the_median_interval_holds_the_middle_and_widens_with_fewer_rounds():
    values = [float(v) for v in range(1, 101)]
    low, high = median_interval(values)
    assert low < 50.5 < high and high - low < 25
    few_low, few_high = median_interval(values[::10])
    assert few_high - few_low > high - low


def test_threads_are_fixed_while_timing_and_restored_after():
    before = torch.get_num_threads()
    with fixed_threads(1) as threads:
        assert threads == torch.get_num_threads() == 1
    assert torch.get_num_threads() == before
    with pytest.raises(ConfigError, match="threads=0"):
        with fixed_threads(0):
            pass


def test_the_batch_is_the_first_dim_of_the_first_tensor():
    assert batch_size(torch.zeros(8, 3)) == 8
    assert batch_size({"input_ids": torch.zeros(2, 16, dtype=torch.long)}) == 2
    assert batch_size((torch.tensor(1.0),)) is None


def test_measure_gives_the_median_with_quartiles():
    model = nn.Sequential(nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 4))
    measured = pk.measure(model, torch.randn(2, 16), min_time=0.05)
    timing = measured.latency
    assert timing.low_ms <= timing.median_ms <= timing.high_ms and timing.rounds >= 10
    assert measured.latency_ms == timing.median_ms
    assert pk.measure(model, torch.randn(2, 16), latency=False).latency is None


@pytest.mark.parametrize("build, calls", [
    (lambda: nn.TransformerEncoderLayer(32, 4, 64, batch_first=True), lambda x: (x,)),
    (lambda: nn.MultiheadAttention(32, 4, batch_first=True), lambda x: (x, x, x))],
    ids=["encoder layer", "multi-head attention"])
def test_attention_flops_do_not_depend_on_the_fused_inference_path(build, calls):
    """Without autograd, in eval mode, these modules run one fused op that has no FLOP
    formula: counted there, attention would cost nothing."""
    from prunekit.measure.model import FlopCount, count_flops

    module, x = build().eval(), torch.randn(2, 8, 32)
    with torch.enable_grad(), FlopCount() as unfused:  # autograd forces the unfused path
        module(*calls(x))
    assert count_flops(module, calls(x)) == unfused.flops > 0
    assert torch.backends.mha.get_fastpath_enabled()  # given back as it was


class _EveryFormula(nn.Module):
    """Convolutions, a transposed one, linear layers on 3-d inputs, bmm, addmm and attention:
    the ops whose FLOPs are counted, with arguments given as tensors, lists and tuples."""

    def __init__(self):
        super().__init__()
        self.conv, self.up = nn.Conv2d(3, 8, 3, padding=1), nn.ConvTranspose2d(8, 4, 2, stride=2)
        self.linear = nn.Linear(16, 16)
        self.attention = nn.MultiheadAttention(16, 4, batch_first=True)

    def forward(self, x):
        q = self.linear(self.up(self.conv(x)).flatten(2)[..., :16])
        heads = nn.functional.scaled_dot_product_attention(q[:, None], q[:, None], q[:, None])
        return (torch.bmm(q, q.transpose(1, 2)).sum() + heads.sum()
                + self.attention(q, q, q)[0].sum()
                + torch.addmm(torch.zeros(4, 16), q[0], self.linear.weight).sum())


class _OtherShapes(nn.Module):
    """Calls ``FlopCount`` counts from shapes (batched convolutions, linear layers on rows)
    next to the ones it leaves to ATen: unbatched inputs, a vector through a linear layer,
    grouped and 1-d/3-d convolutions."""

    def __init__(self):
        super().__init__()
        self.c1, self.c3 = nn.Conv1d(4, 6, 3, groups=2), nn.Conv3d(2, 4, (1, 2, 2))
        self.linear = nn.Linear(6, 3)

    def forward(self, x):
        wave = self.c1(x) + self.c1(x[0])  # batched, then one unbatched sample
        volume = self.c3(wave.reshape(2, 2, 2, 3, 3)).flatten(1)[:, :6]
        vector = nn.functional.linear(volume[0], self.linear.weight)  # a vector
        return self.linear(volume).sum() + vector.sum()


def _tiny_llama() -> nn.Module:
    """A Hugging Face decoder: attention by ``scaled_dot_product_attention``, rotary
    embeddings, many shape reads (which ``FlopCount`` lets through)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    return LlamaForCausalLM(LlamaConfig(
        hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, vocab_size=100))


@pytest.mark.parametrize("build, x", [
    (lambda: _EveryFormula(), torch.randn(2, 3, 8, 8)),
    (lambda: torchvision.models.resnet18(), torch.randn(1, 3, 32, 32)),
    (lambda: _OtherShapes(), torch.randn(2, 4, 8)),
    (lambda: _tiny_llama(), torch.randint(0, 100, (2, 12)))],
    ids=["every formula", "resnet18", "other shapes", "llama"])
@pytest.mark.parametrize("counter", ["FlopCount", "_AtenFlops"])
def test_flop_count_agrees_with_torchs_own_counter(build, x, counter):
    """``FlopCount`` counts convolutions and linear layers from their shapes and the rest
    with ``flop_counter``'s formulas on shapes it reads itself (``_AtenFlops``, the counter
    for TorchScript: on ATen ops alone): the totals must be those ``FlopCounterMode`` gives,
    fused attention off for both (a torch function mode turns it off for ours anyway)."""
    import importlib

    from torch.utils.flop_counter import FlopCounterMode

    from prunekit.measure.model import without_fused_attention

    model = build().eval()
    # the module (``prunekit.measure.model`` the attribute is the function of that name)
    counters = importlib.import_module("prunekit.measure.model")
    with torch.no_grad(), without_fused_attention():
        with getattr(counters, counter)() as ours:
            model(x)
        with FlopCounterMode(display=False) as theirs:
            model(x)
    assert ours.flops == theirs.get_total_flops() > 0


def test_a_scripted_block_is_counted_on_aten_ops():
    """TorchScript calls ATen without Python torch functions: a model holding one is
    counted on the dispatch mode alone, so its FLOPs are not missed."""
    from torch.utils.flop_counter import FlopCounterMode

    from prunekit.measure.model import calls_aten_outside_python, count_flops

    model = nn.Sequential(nn.Conv2d(3, 4, 3), torch.jit.script(nn.Conv2d(4, 4, 3))).eval()
    assert calls_aten_outside_python(model)
    assert not calls_aten_outside_python(model[0])
    x = torch.randn(1, 3, 8, 8)
    with torch.no_grad(), FlopCounterMode(display=False) as theirs:
        model(x)
    assert count_flops(model, x) == theirs.get_total_flops() == (4 * 27 * 36 + 4 * 36 * 16) * 2


def test_models_keep_their_training_mode_after_timing():
    model = nn.Sequential(nn.Linear(4, 4), nn.Dropout(0.5)).train()
    time_models([model], torch.randn(1, 4), min_time=0)
    assert model.training and model[1].training


def test_the_command_line_prints_both_timings_and_how_they_were_taken(tmp_path, monkeypatch):
    monkeypatch.setattr(cli_console, "width", 200)
    runner = CliRunner()
    result = runner.invoke(cli_app, ["prune", "--model", "torchvision:resnet18",
                                     "--input-shape", "2,3,32,32", "--threads", "1",
                                     "--out", str(tmp_path / "out")])
    assert result.exit_code == 0, result.output
    assert "latency ms, median (quartiles)" in result.output
    assert "batch 2, 1 thread, " in result.output and "interleaved rounds" in result.output
    quiet = runner.invoke(cli_app, ["prune", "--model", "torchvision:resnet18",
                                    "--input-shape", "1,3,32,32", "--no-latency",
                                    "--out", str(tmp_path / "quiet")])
    assert quiet.exit_code == 0, quiet.output
    assert "latency" not in quiet.output


def wide_mlp() -> tuple[nn.Module, torch.Tensor]:
    """Most of its time is the hidden layer's matmuls, so fewer neurons is less time."""
    torch.manual_seed(0)
    return (nn.Sequential(nn.Linear(256, 1024), nn.ReLU(), nn.Linear(1024, 256)).eval(),
            torch.randn(64, 256))


def test_a_latency_target_searches_by_timing_and_reports_what_it_reached():
    model, x = wide_mlp()
    result = pk.prune(model, x, pk.FilterPruning(latency_target=0.6))
    reached = result.latency
    assert reached is not None and reached.target == 0.6
    assert reached.reached == pytest.approx(1 / reached.measured.speedup)
    assert model[0].out_features < 1024  # something was removed to get there
    verdict = "met" if reached.reached <= 0.63 else "not met"  # within 5% of 60%, or below
    assert f"latency target 60% of the unpruned model's time: {verdict}, reached " in str(result)
    assert model[0].out_features % 8 == 0  # widths the CPU kernels run fast
    assert result.report.ok  # still the verified prune
    assert result.latency.widths == ""  # none timed per layer


def test_a_latency_target_can_keep_widths_timed_per_layer():
    model, x = wide_mlp()
    result = pk.prune(model, x, pk.FilterPruning(latency_target=0.6, round_to="measured"))
    assert model[0].out_features < 1024
    # the kept width was chosen by timing both linear layers at the widths near it
    assert "kept widths timed on this machine for 2 layer shapes" in result.latency.widths


def test_an_unreachable_latency_target_says_why_and_leaves_the_model_alone():
    model, x = wide_mlp()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(pk.PruneError, match="cannot reach 1% of the unpruned latency"):
        pk.prune(model, x, pk.FilterPruning(latency_target=0.01, max_ratio=0.1))
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)


@pytest.mark.parametrize("options, message", [
    ({"latency_target": 1.5}, "latency_target is the fraction of the unpruned latency"),
    ({"latency_target": 0.0}, "latency_target is the fraction"),
    ({"latency_target": 0.5, "flops_target": 0.5}, "not flops_target and latency_target"),
])
def test_bad_latency_targets_are_clear_errors(options, message):
    with pytest.raises(ConfigError, match=message):
        pk.ChannelPruning(**options)


def test_a_latency_target_is_one_shot():
    model, x = wide_mlp()
    with pytest.raises(ConfigError, match="latency_target is reached in one step"):
        pk.iterative_prune(model, x, pk.FilterPruning(latency_target=0.5), steps=2)


def test_the_command_line_takes_a_latency_target_for_channel_methods_only(tmp_path):
    runner = CliRunner()
    result = runner.invoke(cli_app, ["prune", "--model", "torchvision:resnet18", "--input-shape",
                                     "1,3,32,32", "--method", "layers", "--latency-target",
                                     "0.5", "--out", str(tmp_path / "out")])
    assert result.exit_code == 2
    assert "--latency-target: --method layers has no --latency-target option" in result.output
    assert not (tmp_path / "out").exists()


def test_iterative_steps_are_timed_against_the_unpruned_model():
    model, x = wide_mlp()
    history = pk.iterative_prune(model, x, pk.FilterPruning(0.5), steps=2, timing_inputs=x)
    assert history.records[0].speedup is None
    for step in history.steps:
        assert step.speedup_low <= step.speedup <= step.speedup_high
    untimed = pk.iterative_prune(wide_mlp()[0], x, pk.FilterPruning(0.5), steps=1)
    assert untimed.steps[0].speedup is None
