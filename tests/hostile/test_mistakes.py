"""Promise: "every mistake is one line naming the argument or option, and leaves the model
and the files as they were".

Attacks: the command line's own parsing (bad numbers, misspelt options and methods, a
negative count), options the library names by their Python field, a layer count larger
than the model has, a model on the meta device, a TorchScript model."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch
from torch import nn

import prunekit as pk
from prunekit.cli.commands import main


def run(capsys, *args):
    """The exit code and what stderr said, progress lines ("[12 s] scoring ...", shown
    before a mistake found in the middle of the work) left out."""
    with pytest.raises(SystemExit) as exit_info:
        main(["prune", "--model", "torchvision:resnet18", "--input-shape", "1,3,32,32",
              "--no-latency", *args])
    lines = capsys.readouterr().err.strip().splitlines()
    progress = [line for line in lines if line.startswith("[") and " s] " in line]
    assert lines[len(progress):] == [line for line in lines if line not in progress], lines
    return exit_info.value.code, [line for line in lines if line not in progress]


@pytest.mark.parametrize("args, expected", [
    (["--out", "o", "--method", "bogus"], "--method 'bogus': choose one of"),
    (["--out", "o", "--method", "filtr"], "did you mean 'filter'"),
    (["--out", "o", "--round-to", "abc"], "--round-to 'abc'"),
    (["--out", "o", "--calibration-batches", "-1"], "'--calibration-batches'"),
    (["--out", "o", "--ratio", "abc"], "'--ratio'"),
    (["--out", "o", "--ratoi", "0.5"], "No such option: --ratoi"),
    (["--out", "o", "--criterion", "l3"], "--criterion: unknown criterion 'l3'"),
    (["--out", "o", "--criterion", "fmgp"], "did you mean 'fpgm'"),
    (["--ratio", "0.5"], "Missing option '--out'"),
])
def test_a_mistake_is_one_error_line_with_exit_code_2(capsys, tmp_path, monkeypatch, args,
                                                      expected):
    monkeypatch.chdir(tmp_path)
    code, lines = run(capsys, *args)
    assert code == 2
    assert len(lines) == 1 and lines[0].startswith("error: ") and expected in lines[0], lines
    assert not (tmp_path / "o").exists()


def test_more_layers_than_the_model_can_lose_names_the_option(capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code, lines = run(capsys, "--out", "o", "--method", "layers", "--n", "50")
    assert code == 2 and len(lines) == 1
    assert lines[0].startswith("error: --n is 50") and "give at most" in lines[0]


def test_the_installed_command_prints_one_line_too(tmp_path):
    done = subprocess.run([sys.executable, "-c", "from prunekit.cli.commands import main; "
                           "main()", "prune", "--model", "torchvision:resnet18", "--out",
                           str(tmp_path / "o"), "--ratio", "x"], capture_output=True, text=True)
    assert done.returncode == 2
    assert done.stderr.strip().count("\n") == 0 and done.stderr.startswith("error: ")


def small():
    return nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Conv2d(8, 4, 3))


@pytest.mark.parametrize("build, match", [
    (lambda: torch.jit.script(small()), "TorchScript"),
    (lambda: small().to("meta"), "meta device"),
])
def test_models_prunekit_cannot_read_are_one_line(build, match):
    model = build()
    with pytest.raises(pk.ConfigError, match=match):
        pk.prune(model, torch.randn(1, 3, 8, 8), pk.FilterPruning(0.5))
    with pytest.raises(pk.ConfigError, match=match):
        pk.verify(model, torch.randn(1, 3, 8, 8), pk.Plan())


def test_a_criterion_typo_in_python_offers_close_matches():
    with pytest.raises(pk.ConfigError, match="did you mean 'taylor'"):
        pk.FilterPruning(0.5, "tailor")
