"""Which of the student's modules learn from which of the teacher's (a distillation's hidden
terms), and the hooks that capture their outputs while both run. ``config`` is the run's
``Distillation``."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ..errors import ConfigError
from ..importance.distance import first_tensor
from ..surgery.stacks import find_block_stack


def matched_modules(student: nn.Module, teacher: nn.Module, config: Any) -> dict[str, str]:
    """Student module → teacher module whose outputs are matched."""
    if config.layer_map:
        for side, model, names in (("student", student, config.layer_map),
                                   ("teacher", teacher, config.layer_map.values())):
            modules = dict(model.named_modules())
            missing = [name for name in names if name not in modules]
            if missing:
                raise ConfigError(f"layer_map: the {side} has no module {missing[0]!r}")
        return dict(config.layer_map)
    if config.hidden is False:
        return {}
    stack, teacher_stack = find_block_stack(student), find_block_stack(teacher)
    if stack is None or stack != teacher_stack:
        if config.hidden is True:
            raise ConfigError("hidden=True: the student and the teacher have no common stack "
                              "of blocks to match; pass layer_map={student module: teacher "
                              "module}")
        return {}
    count = len(student.get_submodule(stack))
    removed = set(config.plan.layers) if config.plan is not None else set()
    kept = [i for i in range(len(teacher.get_submodule(stack)))
            if f"{stack}.{i}" not in removed]
    if len(kept) != count:
        how = ("the plan's removed layers leave " f"{len(kept)}" if removed
               else f"the teacher has {len(kept)}")
        raise ConfigError(f"the student has {count} blocks in {stack}, {how}; pass plan= (the "
                          f"plan that pruned the student) or layer_map=")
    return {f"{stack}.{new}": f"{stack}.{old}" for new, old in enumerate(kept)}


class captured:
    """Forward hooks that keep the latest output tensor of each named module."""

    def __init__(self, model: nn.Module, names: list[str]):
        self.model, self.names, self.states, self.handles = model, names, {}, []

    def __enter__(self) -> dict[str, torch.Tensor]:
        modules = dict(self.model.named_modules())
        for name in self.names:
            def hook(_module, _args, output, name=name):
                self.states[name] = first_tensor(output)
            self.handles.append(modules[name].register_forward_hook(hook))
        return self.states

    def __exit__(self, *exc) -> None:
        for handle in self.handles:
            handle.remove()
        self.states.clear()
