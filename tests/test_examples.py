"""The examples in examples/ run and print what the README shows."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from .helpers import torchrun

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_prune_resnet18_example():
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    run = subprocess.run([sys.executable, str(ROOT / "examples" / "prune_resnet18.py")],
                         capture_output=True, text=True, timeout=300, cwd=ROOT, env=env)
    assert run.returncode == 0, run.stderr
    lines = run.stdout.splitlines()
    assert lines[0].startswith("params 11,689,512 -> 3,055,880")
    assert lines[1].startswith("check: equivalent: 1 output tensor on the example inputs")
    assert lines[2].startswith("equivalent:")  # pk.verify on a copy says the same
    assert lines[-1] == "reloaded outputs identical: True"


@pytest.mark.slow
def test_distributed_recovery_example_on_two_processes(tmp_path):
    """The README's torchrun command: two gloo processes derive one plan and the first saves."""
    env = {**os.environ, "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    run = torchrun(2, [str(ROOT / "examples" / "distributed_recovery.py"), "--steps", "5",
                       "--out", str(tmp_path / "pruned")], timeout=300, cwd=tmp_path, env=env)
    assert run.returncode == 0, run.stderr[-3000:]
    plans = sorted(line for line in run.stdout.splitlines() if line.startswith("process "))
    assert len(plans) == 2 and plans[0].split(": ")[1] == plans[1].split(": ")[1]
    assert "(5 steps on 2 process(es)" in run.stdout
    assert (tmp_path / "pruned" / "plan.json").exists()
