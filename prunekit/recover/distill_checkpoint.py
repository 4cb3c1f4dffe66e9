"""A distillation's state on disk: written atomically every few steps (tensors and numbers
only, no pickled code) and checked whole before a resumed run touches the student.

``config`` is the run's ``Distillation``, ``objective`` its student-and-projections module,
``result`` its ``DistillResult``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..core.distributed import barrier, is_main_process
from ..errors import ConfigError

CHECKPOINT_FILE = "distill.pt"


def _checkpoint_file(config: Any) -> Path:
    return Path(config.checkpoint) / CHECKPOINT_FILE


def save_state(config: Any, objective: nn.Module, optimizer, schedule, result: Any,
               used: int) -> None:
    """Write the state (tensors and numbers only; no pickled code) atomically, on the main
    process; the others wait so that none reads a half-written file later."""
    if is_main_process():
        path = _checkpoint_file(config)
        path.parent.mkdir(parents=True, exist_ok=True)
        state = {"steps": config.steps, "step": result.steps, "batches_used": used,
                 "student": objective.student.state_dict(),
                 "projections": objective.projections.state_dict(),
                 "optimizer": optimizer.state_dict(), "schedule": schedule.state_dict(),
                 "losses": [result.losses, result.output_losses, result.hidden_losses],
                 "rng": torch.get_rng_state()}
        temporary = path.with_name(path.name + ".partial")
        torch.save(state, temporary)
        os.replace(temporary, path)
    barrier()


def resume_state(config: Any, objective: nn.Module, optimizer, schedule, result: Any) -> int:
    """Load the checkpoint if there is one; how many batches the run had used."""
    if config.checkpoint is None or not _checkpoint_file(config).exists():
        return 0
    path = _checkpoint_file(config)
    try:
        state = torch.load(path, weights_only=True)
    except Exception as error:
        raise ConfigError(f"checkpoint: {path} cannot be read ({type(error).__name__}: "
                          f"{error}); delete it to start afresh") from error
    missing = sorted(set(_CHECKPOINT_KEYS) - set(state)) if isinstance(state, dict) else [
        "everything"]
    if missing:
        raise ConfigError(f"checkpoint: {path} is not a distillation checkpoint (it lacks "
                          f"{', '.join(map(repr, missing[:3]))}); delete it to start afresh")
    if state.get("steps") != config.steps:
        raise ConfigError(f"checkpoint: {path} is of a run of {state.get('steps')} steps, "
                          f"this one asks for {config.steps}; give the same steps or another "
                          f"checkpoint folder")
    # everything is checked before anything is loaded: a refusal leaves the student as it was
    for what, module, saved in (("student", objective.student, state["student"]),
                                ("projections", objective.projections, state["projections"])):
        problem = _state_mismatch(module.state_dict(), saved)
        if problem:
            raise ConfigError(f"checkpoint: {path} holds another {what}'s weights ({problem}); "
                              f"give the student it was written for, or another checkpoint "
                              f"folder")
    objective.student.load_state_dict(state["student"])
    objective.projections.load_state_dict(state["projections"])
    optimizer.load_state_dict(state["optimizer"])
    schedule.load_state_dict(state["schedule"])
    torch.set_rng_state(state["rng"])
    result.losses, result.output_losses, result.hidden_losses = (
        list(values) for values in state["losses"])
    result.steps = result.resumed_from = state["step"]
    return state["batches_used"]


_CHECKPOINT_KEYS = ("steps", "step", "batches_used", "student", "projections", "optimizer",
                    "schedule", "losses", "rng")


def _state_mismatch(own: dict[str, torch.Tensor], saved: Any) -> str | None:
    """What keeps ``saved`` from loading into a module whose state is ``own``, or None."""
    if not isinstance(saved, dict):
        return f"a {type(saved).__name__}, not a state dict"
    if saved.keys() != own.keys():
        name = sorted(own.keys() ^ saved.keys())[0]
        return f"{name!r} is {'missing' if name in own else 'not the model’s'}"
    for name, tensor in own.items():
        other = saved[name]
        if not isinstance(other, torch.Tensor) or other.shape != tensor.shape:
            shape = list(other.shape) if isinstance(other, torch.Tensor) else type(other).__name__
            return f"{name!r} is {shape}, the model's {list(tensor.shape)}"
    return None
