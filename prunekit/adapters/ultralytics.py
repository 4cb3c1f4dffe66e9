"""A pruned Ultralytics model, back in Ultralytics.

``predict``, ``val``, ``export`` and ``save`` use the model object as it is, so they work on a
pruned model unchanged. ``train`` does not: Ultralytics builds a fresh network from the
model's YAML (and copies in only the weights whose shapes still match), which silently
trains the unpruned architecture. ``pruned_trainer`` gives ``train`` a trainer that keeps the
pruned network::

    from ultralytics import YOLO
    import prunekit as pk
    from prunekit.adapters.ultralytics import pruned_trainer

    yolo = YOLO("yolo11n.yaml")
    pk.prune(yolo.model, torch.randn(1, 3, 640, 640), pk.FilterPruning(0.5, "l1"))
    yolo.train(data="data.yaml", epochs=10, trainer=pruned_trainer(yolo))
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..errors import ConfigError


def pruned_trainer(yolo: Any) -> type:
    """The trainer class ``yolo.train(trainer=...)`` should use for a pruned ``yolo``: its
    task's own trainer, except that the network it trains is ``yolo.model`` itself."""
    model = getattr(yolo, "model", None)
    if not isinstance(model, nn.Module) or not hasattr(yolo, "task_map"):
        raise ConfigError(f"pruned_trainer takes an Ultralytics model (YOLO(...), RTDETR(...)) "
                          f"whose .model is a PyTorch module; got {type(yolo).__name__}")
    base = yolo.task_map[yolo.task]["trainer"]

    class PrunedTrainer(base):
        """Trains the pruned network as it is instead of rebuilding it from its YAML."""

        def get_model(self, cfg=None, weights=None, verbose=True):
            return model

    PrunedTrainer.__name__ = PrunedTrainer.__qualname__ = f"Pruned{base.__name__}"
    return PrunedTrainer


# what an Ultralytics checkpoint may name besides module classes: plain records of its
# training run, which hold data and run no code of their own
_PLAIN_RECORDS = {"ultralytics.utils.IterableSimpleNamespace", "types.SimpleNamespace",
                  "datetime.datetime", "datetime.date", "pathlib.PosixPath",
                  "pathlib.WindowsPath", "collections.OrderedDict", "builtins.set"}


def load_network_safely(path: str | Path, option: str) -> nn.Module:
    """The network in an Ultralytics ``.pt`` checkpoint, read with ``torch.load(
    weights_only=True)``: the pickle may name PyTorch's and Ultralytics' module classes
    and a few plain records, and nothing else, so a file cannot run code while it loads.
    A file that names anything else is refused with one line; ``option`` is what the
    user typed, named in the message."""
    path = str(path)
    try:
        names = torch.serialization.get_unsafe_globals_in_checkpoint(path)
    except Exception as error:
        raise ConfigError(f"{option}: {path!r} is not a PyTorch checkpoint "
                          f"({type(error).__name__}: {str(error)[:200]})") from error
    allowed = []
    for name in names:
        found = _module_class(name) if name not in _PLAIN_RECORDS else _resolve(name)
        if found is None:
            raise ConfigError(
                f"{option}: {path!r} asks to run {name!r} while it loads, which is not a "
                f"PyTorch or Ultralytics module class; prunekit runs no code from a file "
                f"unless you pass --trust-pickle (only for a file you trust)")
        allowed.append(found)
    try:
        with torch.serialization.safe_globals(allowed):
            checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:
        raise ConfigError(f"{option}: {path!r} cannot be read safely ({type(error).__name__}: "
                          f"{str(error).splitlines()[0][:200]}); pass --trust-pickle to load "
                          f"it as Ultralytics does, only if you trust the file") from error
    network = checkpoint
    if isinstance(checkpoint, dict):  # its EMA weights are the ones Ultralytics predicts with
        network = next((checkpoint[key] for key in ("ema", "model")
                        if isinstance(checkpoint.get(key), nn.Module)), None)
    if not isinstance(network, nn.Module):
        raise ConfigError(f"{option}: {path!r} holds no Ultralytics network (no 'model' "
                          f"module in it)")
    return network.float()


def _resolve(name: str):
    module, _, attr = name.rpartition(".")
    try:
        return getattr(importlib.import_module(module), attr)
    except (ImportError, AttributeError):
        return None


# where the network's building blocks are defined: a class from elsewhere in Ultralytics
# (``nn.autobackend.AutoBackend`` loads whatever file its argument names, unsafely) is never
# allowed, since a hostile pickle may call a class it names with arguments of its choice
_NETWORK_MODULES = ("torch.nn.modules.", "ultralytics.nn.modules.", "ultralytics.nn.tasks.")


def _module_class(name: str) -> type | None:
    """The class ``name`` names if it is an ``nn.Module`` among the network building blocks
    of PyTorch or Ultralytics."""
    if not name.startswith(_NETWORK_MODULES):
        return None
    found = _resolve(name)
    return found if isinstance(found, type) and issubclass(found, nn.Module) else None
