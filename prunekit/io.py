"""Save and load pruned models: safetensors weights plus the plan as JSON, no pickled code."""

from __future__ import annotations

from pathlib import Path

from safetensors.torch import load_model, save_model
from torch import nn

from .errors import PlanError
from .hf.config import update_config
from .plan import Plan
from .surgery.apply import apply_plan

WEIGHTS_FILE = "model.safetensors"
PLAN_FILE = "plan.json"


def save(model: nn.Module, directory: str | Path, plan: Plan) -> Path:
    """Write ``model.safetensors`` and ``plan.json`` into ``directory`` (created if needed).

    Example:
        >>> pk.save(model, "pruned/", result.plan)
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    plan.save(directory / PLAN_FILE)
    save_model(model, str(directory / WEIGHTS_FILE))
    return directory


def load(directory: str | Path, model: nn.Module) -> nn.Module:
    """Replay the saved plan on a freshly built ``model`` and load the saved weights into it.

    The model must be the same architecture the plan was made on, unpruned. If the plan or
    the weights do not fit, the model is left as it was. A Hugging Face model's config is
    updated to the pruned sizes where one config can describe them.

    Example:
        >>> model = pk.load("pruned/", torchvision.models.resnet18())
    """
    directory = Path(directory)
    for name in (PLAN_FILE, WEIGHTS_FILE):
        if not (directory / name).is_file():
            raise PlanError(f"{str(directory)!r} has no {name}; was it written by pk.save?")
    plan = Plan.load(directory / PLAN_FILE)

    def load_weights(pruned: nn.Module) -> None:
        try:
            load_model(pruned, str(directory / WEIGHTS_FILE), strict=True)
        except RuntimeError as error:
            raise PlanError(f"weights in {str(directory)!r} do not fit the model: {error}") from error

    apply_plan(model, plan, check=load_weights)
    update_config(model)
    return model
