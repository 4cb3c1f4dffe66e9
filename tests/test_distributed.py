"""Two CPU processes on the gloo backend against one: the same plans from data split between
them, and distillation and fine-tuning that follow one process on the same global batches."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import prunekit as pk

from . import distributed_checks as checks
from .helpers import torchrun

SCRIPT = Path(checks.__file__)


def derive(out: Path, processes: int) -> tuple[dict, dict[str, torch.Tensor]]:
    out.mkdir()
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    if processes > 1:
        done = torchrun(processes, [str(SCRIPT), str(out)], timeout=600, env=env)
    else:
        done = subprocess.run([sys.executable, str(SCRIPT), str(out)], capture_output=True,
                              text=True, timeout=600, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    return (json.loads((out / "derived.json").read_text()),
            load_file(out / "weights.safetensors"))


@pytest.fixture(scope="module")
def one_and_two(tmp_path_factory):
    root = tmp_path_factory.mktemp("distributed")
    return derive(root / "one", 1), derive(root / "two", 2)


@pytest.mark.slow  # starts torchrun twice: 16 s of the fast tier
def test_two_processes_derive_the_plans_of_one(one_and_two):
    (one, _), (two, _) = one_and_two
    assert (one["world_size"], two["world_size"]) == (1, 2)
    assert sorted(one["plans"]) == sorted(two["plans"]) and len(one["plans"]) == 13
    for name, plan in one["plans"].items():
        assert plan["tensors"] or plan["layers"], f"{name}: nothing pruned"
        assert two["plans"][name] == plan, name


@pytest.mark.slow  # starts torchrun twice: 16 s of the fast tier
def test_two_process_training_follows_one_process_on_the_same_global_batches(one_and_two):
    (one, weights_one), (two, weights_two) = one_and_two
    assert two["losses"].pop("processes") == 2 and one["losses"].pop("processes") == 1
    for name, losses in one["losses"].items():
        assert two["losses"][name] == pytest.approx(losses, rel=2e-5, abs=1e-7), name
    assert any(loss > 0.01 for loss in one["losses"]["hidden"])  # matched, and not trivially
    assert weights_one.keys() == weights_two.keys()
    for name, value in weights_one.items():
        torch.testing.assert_close(weights_two[name], value, rtol=1e-4, atol=1e-5, msg=name)


@pytest.mark.slow  # starts torchrun twice: 16 s of the fast tier
def test_weights_fitted_to_data_agree_across_processes(one_and_two):
    """Least-squares reconstruction sums the normal equations, so two processes fit what one
    fits; BatchNorm statistics re-estimated on each process's rows are averaged, so both
    processes hold the same (not one process's: a half batch has its own variance)."""
    root = Path(one_and_two[0][0]["out"]).parent
    one = load_file(root / "one" / "fitted-0.safetensors")
    first, second = (load_file(root / "two" / f"fitted-{rank}.safetensors") for rank in (0, 1))
    for name, value in first.items():
        torch.testing.assert_close(second[name], value, rtol=0, atol=0, msg=name)
        if name.startswith("reconstructed/"):
            torch.testing.assert_close(value, one[name], rtol=1e-4, atol=1e-5, msg=name)
    assert any(not torch.equal(one[name], first[name]) for name in one
               if name.startswith("norms/") and "running_var" in name)


def test_a_share_of_the_data_alone_gives_other_plans():
    """The control: what the processes agree on depends on all of the data, so a process
    scoring its own half without the sums would disagree."""
    halves = [(x[:4], y[:4]) for x, y in checks.images()]
    differs = []
    for criterion in ("taylor", "apoz"):
        plans = []
        for data in (checks.images(), halves):
            model = checks.cnn()
            plans.append(pk.prune(model, data[0][0], pk.FilterPruning(0.5, criterion),
                                  data=data).plan.tensors)
        differs.append(plans[0] != plans[1])
    assert any(differs)


def test_rank_share_splits_nested_batches_and_refuses_uneven_ones(monkeypatch):
    from prunekit.core import distributed

    batch = {"input_ids": torch.arange(8).reshape(4, 2), "extra": (torch.arange(4), 7)}
    assert list(pk.rank_share([batch]))[0] is batch  # one process: unchanged
    monkeypatch.setattr(distributed, "is_distributed", lambda: True)
    monkeypatch.setattr(distributed, "world_size", lambda: 2)
    monkeypatch.setattr(distributed, "rank", lambda: 1)
    share = list(pk.rank_share([batch]))[0]
    assert share["input_ids"].tolist() == [[4, 5], [6, 7]]
    assert share["extra"][0].tolist() == [2, 3] and share["extra"][1] == 7
    with pytest.raises(pk.ConfigError, match="does not split evenly over 2 processes"):
        list(pk.rank_share([torch.zeros(3, 2)]))


@pytest.mark.slow  # starts torchrun five times, 2 s each
def test_a_runtime_abort_is_launched_once_more_and_a_python_error_is_not(tmp_path):
    """The retry in ``torchrun`` covers gloo's C++ aborts only, and only once."""
    script = tmp_path / "aborts.py"
    script.write_text(
        "import os, sys\nfrom pathlib import Path\n"
        "runs = Path(sys.argv[1])\nruns.write_text(runs.read_text() + 'x')\n"
        "if len(runs.read_text()) <= int(sys.argv[2]):\n"
        "    if sys.argv[3] == 'abort':\n"
        "        print('terminate called without an active exception', file=sys.stderr)\n"
        "        sys.stderr.flush(); os.abort()\n"
        "    raise ValueError('a Python error')\n")
    for aborts, kind, attempts, succeeds in ((1, "abort", 2, True), (2, "abort", 2, False),
                                             (1, "error", 1, False)):
        runs = tmp_path / f"{aborts}-{kind}"
        runs.write_text("")
        done = torchrun(1, [str(script), str(runs), str(aborts), kind], timeout=120)
        assert (done.returncode == 0) == succeeds and len(runs.read_text()) == attempts, runs
