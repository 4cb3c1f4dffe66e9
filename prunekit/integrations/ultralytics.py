"""A pruned Ultralytics model, back in Ultralytics.

``predict``, ``val``, ``export`` and ``save`` use the model object as it is, so they work on a
pruned model unchanged. ``train`` does not: Ultralytics builds a fresh network from the
model's YAML (and copies in only the weights whose shapes still match), which silently
trains the unpruned architecture. ``pruned_trainer`` gives ``train`` a trainer that keeps the
pruned network::

    from ultralytics import YOLO
    import prunekit as pk
    from prunekit.integrations.ultralytics import pruned_trainer

    yolo = YOLO("yolo11n.yaml")
    pk.prune(yolo.model, torch.randn(1, 3, 640, 640), pk.FilterPruning(0.5, "l1"))
    yolo.train(data="data.yaml", epochs=10, trainer=pruned_trainer(yolo))
"""

from __future__ import annotations

from typing import Any

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
