"""Keeping a model's own description of its sizes true after surgery.

A model family whose models carry a config (Hugging Face's ``model.config``, a detection
library's YAML dict …) registers one updater with ``register_config_updater``: given the
pruned model, it makes the config describe the new shapes and returns True (a model built
from the config reloads the weights), False (no config can; save with ``pk.save``), or None
(not one of its models). ``update_config`` asks each in turn, the latest registered first.
"""

from __future__ import annotations

from typing import Callable

from torch import nn

from ..errors import ConfigError

ConfigUpdater = Callable[[nn.Module], "bool | None"]
_UPDATERS: list[ConfigUpdater] = []


def register_config_updater(update: ConfigUpdater) -> ConfigUpdater:
    """Register ``update(model) -> True | False | None`` (see the module docstring); usable
    as a decorator.

    Example:
        >>> @pk.register_config_updater
        ... def update_yaml(model):
        ...     if not hasattr(model, "yaml"): return None
        ...     model.yaml["width"] = model.stem.out_channels; return True
    """
    if not callable(update):
        raise ConfigError(f"register_config_updater takes a function of the pruned model, got "
                          f"{type(update).__name__}")
    if update not in _UPDATERS:
        _UPDATERS.insert(0, update)
    return update


def update_config(model: nn.Module) -> bool | None:
    """The first answer of the registered updaters that knows the model (None if none does)."""
    for update in _UPDATERS:
        answer = update(model)
        if answer is not None:
            return answer
    return None
