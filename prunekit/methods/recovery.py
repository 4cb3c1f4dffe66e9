"""What a group method runs on the pruned model inside the transaction that pruned it: the
least-squares re-fit (``reconstruct=True``) or bias compensation (``bias_compensation=True``)."""

from __future__ import annotations

import copy

from torch import nn

from ..errors import ConfigError
from ..recover.compensate import bias_compensation
from ..recover.reconstruct import reconstruct
from .base import PruneContext


def recovery_for(method, model: nn.Module, context: PruneContext):
    """With ``method.reconstruct``, re-fit what lost inputs against a copy of the unpruned
    model on ``context.data`` (with ``bias_compensation`` too, layers without a bias get one
    to fit); with ``method.bias_compensation`` alone, give the mean of what they lost back
    through their biases."""
    option = ("reconstruct" if getattr(method, "reconstruct", False)
              else "bias_compensation" if method.bias_compensation else None)
    if option is None:
        return None
    if not context.data:
        raise ConfigError(f"{type(method).__name__}({option}=True) reads calibration data; "
                          f"pass data=, a non-empty iterable of batches")
    if option == "bias_compensation":
        return bias_compensation(model, context.data, context.progress)
    original = copy.deepcopy(model)
    return lambda pruned, plan: reconstruct(original, pruned, plan, context.data,
                                            progress=context.progress,
                                            add_biases=method.bias_compensation)
