"""Shared checks for pruning tests."""

from __future__ import annotations

import copy
import math
import subprocess
import sys

import torch
from torch import nn

import prunekit as pk
from prunekit.core.calls import call_model, iter_tensors


def outputs(model: nn.Module, inputs) -> list[torch.Tensor]:
    model.eval()
    with torch.no_grad():
        return list(iter_tensors(call_model(model, inputs)))


def layer_inputs(model: nn.Module, names: list[str], data) -> dict[str, torch.Tensor]:
    """Every token's input to each named layer over ``data`` (dict batches), one row per
    token, in float64: what a data criterion reads, captured independently of it."""
    seen: dict[str, list[torch.Tensor]] = {name: [] for name in names}
    modules = dict(model.named_modules())
    handles = [modules[name].register_forward_hook(
        lambda _m, args, _o, name=name: seen[name].append(args[0].reshape(-1, args[0].shape[-1])))
        for name in names]
    try:
        with torch.no_grad():
            for batch in data:
                model(**batch)
    finally:
        for handle in handles:
            handle.remove()
    return {name: torch.cat(rows).double() for name, rows in seen.items()}


def predicted_params(model: nn.Module, plan: pk.Plan) -> int:
    """Parameter count after the plan, computed from the plan alone."""
    total = 0
    seen = set()
    for name, param in model.named_parameters():
        if id(param) in seen:
            continue
        seen.add(id(param))
        shape = list(param.shape)
        for dim, kept in plan.tensors.get(name, {}).items():
            shape[dim] = len(kept)
        total += math.prod(shape)
    return total


def check_pruned(original: nn.Module, inputs, method, tmp_path, **kwargs) -> pk.PruneResult:
    """Prune a copy and assert the whole contract: shapes, params, equivalence, grads, I/O."""
    model = copy.deepcopy(original)
    result = pk.prune(model, inputs, method, **kwargs)
    assert not result.plan.is_empty, "nothing was pruned"

    before, after = outputs(original, inputs), outputs(model, inputs)
    assert [t.shape for t in before] == [t.shape for t in after]
    n_params = sum(p.numel() for p in model.parameters())
    assert n_params == result.after.params == predicted_params(original, result.plan)
    assert n_params < result.before.params

    report = pk.verify(original, inputs, result.plan)
    assert report.ok, report

    model.train()
    loss = sum(t.float().pow(2).mean() for t in iter_tensors(call_model(model, inputs))
               if t.is_floating_point())
    loss.backward()
    for name, param in model.named_parameters():
        if param.grad is not None:
            assert param.grad.shape == param.shape, name
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters())

    pk.save(model, tmp_path / "saved", result.plan)
    restored = pk.load(copy.deepcopy(original), tmp_path / "saved")
    for a, b in zip(outputs(model, inputs), outputs(restored, inputs)):
        assert torch.equal(a, b)
    return result


def torchrun(processes: int, script_and_args: list[str], **run_kwargs) -> subprocess.CompletedProcess:
    """``torchrun --standalone --nproc-per-node=PROCESSES script args...``, its output captured.

    gloo's C++ runtime has aborted a worker in about one run of many ("terminate called
    without an active exception", SIGABRT, no Python traceback), which no code of ours can
    reach; a run that ends so is launched once more. A Python error, or a second abort, is
    returned as it is, for the caller's assertion to fail on.
    """
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone",
               f"--nproc-per-node={processes}", *script_and_args]
    for attempt in range(2):
        done = subprocess.run(command, capture_output=True, text=True, **run_kwargs)
        if done.returncode == 0 or "terminate called" not in done.stderr or attempt:
            return done
