"""What a newcomer meets on the command line: help that fits an 80-column terminal, options
that would silently override each other refused, a criterion that needs labels asking for
them, files readable as any other file the user writes, and one-line descriptions."""

import os
import stat
import subprocess
import sys

import pytest
import torch
from torch import nn

import prunekit as pk
from prunekit.cli.commands import main

COMMANDS = ["prune", "export", "analyze", "iterative", "sensitivity", "demo", "compare"]


def test_help_fits_80_columns_and_cuts_nothing():
    # every command's help from one process, as an 80-column terminal shows it
    code = ("import sys\nfrom prunekit.cli.commands import main\n"
            f"for command in {COMMANDS!r}:\n"
            "    print('=== ' + command)\n"
            "    try:\n"
            "        main([command, '--help'])\n"
            "    except SystemExit:\n"
            "        pass\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env={**os.environ, "COLUMNS": "80"})
    assert done.returncode == 0, done.stderr
    helps = dict(part.split("\n", 1) for part in done.stdout.split("=== ")[1:])
    assert sorted(helps) == sorted(COMMANDS)
    for command, text in helps.items():
        assert all(len(line) <= 80 for line in text.splitlines()), (command, text)
        assert "…" not in text and "Usage: " in text and "--help" in text, command


def run(capsys, tmp_path, *args):
    with pytest.raises(SystemExit) as exit_info:
        main(["prune", "--model", "torchvision:resnet18", "--no-latency",
              "--out", str(tmp_path / "o"), *args])
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error")]
    return exit_info.value.code, err


@pytest.mark.parametrize("args, message", [
    (["--ratio", "0.3", "--flops-target", "0.5"], "--ratio and --flops-target"),
    (["--ratio", "0.3", "--latency-target", "0.5"], "--ratio and --latency-target"),
    (["--flops-target", "0.3", "--latency-target", "0.5"], "give one target"),
    (["--input-shape", "1,3,32,32", "--data", "prunekit.cli.data:digits_loaders"],
     "--input-shape and --data"),
    (["--criterion", "taylor", "--input-shape", "1,3,32,32"],
     "--criterion taylor: it ranks by a loss on labelled batches; pass --data"),
    (["--method", "layers", "--criterion", "accuracy", "--input-shape", "1,3,32,32"],
     "--criterion accuracy: it ranks by a loss"),
])
def test_options_that_would_override_each_other_are_refused(capsys, tmp_path, args, message):
    code, err = run(capsys, tmp_path, *args)
    assert code == 2 and len(err) == 1 and message in err[0], err
    assert not (tmp_path / "o").exists()


def test_written_files_are_readable_as_the_umask_allows(tmp_path):
    model, x = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Conv2d(8, 4, 1)), \
        torch.randn(1, 3, 8, 8)
    plan = pk.prune(model, x, pk.FilterPruning(0.5)).plan
    old = os.umask(0o022)
    try:
        pk.save(model, tmp_path / "saved", plan)
    finally:
        os.umask(old)
    for path in [tmp_path / "saved", *(tmp_path / "saved").iterdir()]:
        mode = stat.S_IMODE(path.stat().st_mode)
        assert mode & 0o044 == 0o044, (path.name, oct(mode))  # group and others may read


def test_a_skipped_group_is_described_in_one_short_line():
    class Residual(nn.Module):  # one group coupling 27 tensors, whose pruning fails the check
        def __init__(self):
            super().__init__()
            self.stem = nn.Conv2d(3, 8, 1)
            self.convs = nn.ModuleList(nn.Conv2d(8, 8, 1) for _ in range(8))
            self.fc = nn.Linear(8, 4)

        def forward(self, x):
            x = self.stem(x)
            for conv in self.convs:
                x = x + conv(x)
            x = x * 2 if x.shape[1] == 8 else x * 3  # reads the width: breaks when pruned
            return self.fc(x.mean((2, 3)))

    with pytest.raises(pk.PruneError) as error:
        pk.prune(Residual().eval(), torch.randn(1, 3, 4, 4), pk.FilterPruning(0.5))
    text = str(error.value)
    assert "\n" not in text and "(+23 more)" in text, text
    assert text.count("=>") == 3  # the first four members, then how many more
