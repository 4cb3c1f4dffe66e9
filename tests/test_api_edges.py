"""The API's edges agree with each other: the model comes first in save and load, options
past the first few are keywords, distillation is configured one way, and every long call
reports progress the same way. Old spellings still work and say what to write instead."""

import copy
import io
import warnings

import pytest
import torch
from torch import nn

import prunekit as pk
from prunekit.core.progress import ConsoleProgress, Step


def small_cnn():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                         nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                         nn.Flatten(), nn.Linear(8, 3)).eval()


def labelled(count=3):
    generator = torch.Generator().manual_seed(1)
    return [(torch.randn(4, 3, 8, 8, generator=generator),
             torch.randint(0, 3, (4,), generator=generator)) for _ in range(count)]


def test_load_takes_the_model_first_as_save_does(tmp_path):
    model, x = small_cnn(), torch.randn(1, 3, 8, 8)
    plan = pk.prune(model, x, pk.FilterPruning(0.5)).plan
    pk.save(model, tmp_path / "saved", plan)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        restored = pk.load(small_cnn(), tmp_path / "saved")
    assert torch.equal(restored(x), model(x))
    with pytest.warns(DeprecationWarning, match=r"pk.load\(model, directory\)"):
        old_order = pk.load(tmp_path / "saved", small_cnn())
    assert torch.equal(old_order(x), model(x))
    with pytest.raises(pk.ConfigError, match="model must be the freshly built"):
        pk.load("not a model", tmp_path / "saved")


def test_options_past_the_first_are_keywords_and_old_calls_warn():
    model, x, batches = small_cnn(), torch.randn(2, 3, 8, 8), labelled()
    with pytest.warns(DeprecationWarning, match="pass ratios= by keyword"):
        table = pk.sensitivity(model, x, batches, (0.5,))
    assert {row.ratio for row in table.rows} == {0.5}


def test_distillation_is_configured_one_way():
    teacher = small_cnn()
    inputs = [x for x, _ in labelled()]
    config = pk.Distillation(steps=2, lr=1e-3)
    assert pk.distill(copy.deepcopy(teacher), teacher, inputs, config).steps == 2
    assert pk.distill(copy.deepcopy(teacher), teacher, inputs, steps=2, lr=1e-3).steps == 2
    with pytest.raises(pk.ConfigError, match="not both"):
        pk.distill(copy.deepcopy(teacher), teacher, inputs, config, lr=1e-2)
    with pytest.warns(DeprecationWarning, match="pass steps= by keyword"):
        assert pk.distill(copy.deepcopy(teacher), teacher, inputs, 2).steps == 2


def test_every_long_call_reports_steps_through_one_convention():
    model, x, batches = small_cnn(), torch.randn(2, 3, 8, 8), labelled()
    seen: dict[str, list[Step]] = {}

    def collect(name):
        return seen.setdefault(name, []).append

    pk.prune(copy.deepcopy(model), x, pk.ChannelPruning(0.5, reconstruct=True),
             data=[x], progress=collect("prune"))
    pk.iterative_prune(copy.deepcopy(model), x, pk.FilterPruning(0.5), 2,
                       progress=collect("iterative"))
    pk.sensitivity(model, x, batches, ratios=(0.5,), progress=collect("sensitivity"))
    pk.distill(copy.deepcopy(model), model, [x], steps=3, progress=collect("distill"))
    assert all(isinstance(step, Step) for steps in seen.values() for step in steps)
    assert [s.stage for s in seen["prune"]][:2] == ["tracing and scoring",
                                                    "checking the pruned model"]
    assert any(s.stage == "re-fitting layers" and s.done == s.total for s in seen["prune"])
    assert seen["iterative"][-1] == Step("iterative pruning", 2, 2)
    assert seen["sensitivity"][-1].done == seen["sensitivity"][-1].total > 0
    assert [s.done for s in seen["distill"]] == [1, 2, 3]
    assert seen["distill"][0].detail.startswith("loss ")


def test_an_old_progress_callable_still_works_and_a_wrong_one_is_one_line():
    model = small_cnn()
    losses = []
    with pytest.warns(DeprecationWarning, match=r"taking \(step, loss\) is deprecated"):
        pk.distill(copy.deepcopy(model), model, [torch.randn(2, 3, 8, 8)], steps=2,
                   progress=lambda step, loss: losses.append((step, loss)))
    assert [step for step, _ in losses] == [1, 2] and all(loss >= 0 for _, loss in losses)
    messages = []  # a callable written for the older message strings: str(step) is the line
    pk.iterative_prune(copy.deepcopy(model), torch.randn(1, 3, 8, 8), pk.FilterPruning(0.5), 1,
                       progress=lambda message: messages.append(f"{message}"))
    assert messages[0].startswith("iterative pruning 0/1")
    with pytest.raises(pk.ConfigError, match="progress: give True"):
        pk.prune(copy.deepcopy(model), torch.randn(1, 3, 8, 8), pk.FilterPruning(0.5),
                 progress="yes")


def test_progress_true_in_a_log_is_a_line_per_stage_with_times():
    stream = io.StringIO()  # not a terminal
    show = ConsoleProgress(stream)
    for done in range(4):
        show(Step("scoring", done, 3, f"group {done}"))
    show(Step("checking"))
    show.close()
    lines = stream.getvalue().splitlines()
    assert len(lines) == 3, lines  # a stage's start, its last item with its time, the next
    assert lines[0].endswith("scoring ...") and "scoring 3/3" in lines[1]
    assert lines[2].endswith("checking ...")


def test_progress_on_a_terminal_is_one_line_with_the_time_left():
    class Terminal(io.StringIO):
        def isatty(self):
            return True

    stream = Terminal()
    show = ConsoleProgress(stream)
    show(Step("distilling", 1, 4, "loss 0.5"))
    show(Step("distilling", 2, 4, "loss 0.4"))
    show.close()
    text = stream.getvalue()
    assert text.count("\n") == 1 and text.count("\r") == 2  # rewritten in place
    assert "distilling 2/4: loss 0.4" in text and "left" in text


@pytest.mark.parametrize("call, message", [
    (lambda: pk.FilterPruning(float("nan")), r"FilterPruning.ratio must be a number in \[0, 1\)"),
    (lambda: pk.FilterPruning(True), r"FilterPruning.ratio must be a number in \[0, 1\)"),
    (lambda: pk.LayerPruning(n=0), "LayerPruning.n must be a positive integer, got 0"),
    (lambda: pk.HeadPruning(0.5, rounds=2.0), "HeadPruning.rounds must be a positive integer"),
    (lambda: pk.Distillation(steps=True), "steps must be a positive integer, got True"),
    (lambda: pk.Distillation(lr=float("inf")), "lr must be a number >= 0, got inf"),
    (lambda: pk.Distillation(temperature=-1), "temperature must be a positive number"),
])
def test_every_count_and_fraction_is_checked_the_same_way(call, message):
    with pytest.raises(pk.ConfigError, match=message):
        call()
