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
BiasCompanions = Callable[[nn.Module, "list[str]"], "list[str] | None"]
_COMPANIONS: list[BiasCompanions] = []


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


def register_bias_companions(find: BiasCompanions) -> BiasCompanions:
    """Register ``find(model, layers) -> names | None``: the layers a model family's config
    gives a bias together with ``layers`` (a Llama config's ``mlp_bias`` gives one to the
    gate, up and down projections alike), or None for a model not of the family. Bias
    compensation gives those zero biases too, so that the config can describe the model."""
    if find not in _COMPANIONS:
        _COMPANIONS.insert(0, find)
    return find


def bias_companions(model: nn.Module, layers: list[str]) -> list[str]:
    """The first answer of the registered finders that knows the model (none if none does)."""
    for find in _COMPANIONS:
        answer = find(model, layers)
        if answer is not None:
            return answer
    return []
