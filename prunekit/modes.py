"""Running a model in eval mode without losing the modes its modules were in."""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

from torch import nn


@contextmanager
def evaluating(model: nn.Module) -> Iterator[nn.Module]:
    """Eval mode inside the block; afterwards (error or not) every module is back in its own
    mode, so a model with some submodules in train mode and others in eval keeps that mix.
    Modules that appeared inside the block (a replaced attention layer) take the model's
    mode."""
    modes = [(module, module.training) for module in model.modules()]
    model.eval()
    try:
        yield model
    finally:
        model.train(modes[0][1])
        for module, training in modes:
            module.training = training
