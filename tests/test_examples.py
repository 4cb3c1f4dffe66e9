"""The examples in examples/ run and print what the README shows."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

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
