"""Save and load pruned models: safetensors weights plus the plan as JSON, no pickled code.

Neither can lose what was there before. ``save`` writes a complete checkpoint into a new
folder beside the target and swaps it in only when every file is written. ``load`` checks
the plan and the weights' names and shapes on a copy of the model that holds no data (on the
meta device) before it touches the model, and loads inside the transaction that prunes it.
"""

from __future__ import annotations

import copy
import json
import os
import shutil
import tempfile
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import load_file, load_model, save_model
from torch import nn

from .errors import PlanError
from .hf.config import update_config
from .hf.conversion import StoredNames
from .plan import Plan, original_name
from .surgery.apply import apply_plan, tensor_owners

WEIGHTS_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"
PLAN_FILE = "plan.json"
CHECKPOINT_FILES = {WEIGHTS_FILE, PLAN_FILE}


def save(model: nn.Module, directory: str | Path, plan: Plan) -> Path:
    """Write ``model.safetensors`` and ``plan.json`` into ``directory``.

    The model must be the one ``plan`` pruned (its shapes are checked against the plan). The
    files are written into a new folder beside ``directory`` that replaces it only when
    complete, so a failure (a full disk) leaves any earlier checkpoint there as it was. A
    folder holding anything but a checkpoint is refused rather than replaced.

    Example:
        >>> pk.save(model, "pruned/", result.plan)
    """
    directory = Path(directory)
    if directory.exists():
        if not directory.is_dir():
            raise PlanError(f"cannot save to {str(directory)!r}: it is a file")
        others = sorted(p.name for p in directory.iterdir() if p.name not in CHECKPOINT_FILES)
        if others:
            raise PlanError(f"cannot save to {str(directory)!r}: it holds other files "
                            f"({', '.join(others[:3])}), and saving replaces the folder; "
                            f"choose a new or empty folder")
    return replace_folder(directory, lambda folder: write_checkpoint(model, folder, plan))


def write_checkpoint(model: nn.Module, folder: Path, plan: Plan) -> None:
    """The checkpoint's files, written into ``folder`` as they are (``save`` stages them)."""
    check_matches_plan(model, plan)
    save_model(model, str(folder / WEIGHTS_FILE))
    plan.save(folder / PLAN_FILE)


def replace_folder(directory: Path, write) -> Path:
    """Run ``write(folder)`` on a new folder beside ``directory``, then swap it in for
    ``directory``; on any error the new folder is removed and ``directory`` is untouched."""
    directory.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{directory.name}.", dir=directory.parent))
    try:
        write(staging)
        if directory.exists():
            backup = Path(tempfile.mkdtemp(prefix=f".{directory.name}.old.",
                                           dir=directory.parent))
            os.replace(directory, backup / "previous")
            try:
                os.replace(staging, directory)
            except BaseException:
                os.replace(backup / "previous", directory)
                raise
            shutil.rmtree(backup, ignore_errors=True)
        else:
            os.replace(staging, directory)
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
    return directory


def check_matches_plan(model: nn.Module, plan: Plan) -> None:
    """Refuse a model whose tensors are not the shapes ``plan`` leaves (an unpruned model
    saved with a plan would write a checkpoint that cannot load)."""
    expected = {}
    for name, dims in plan.tensors.items():
        shape = list(plan.shapes.get(name, []))
        for dim, kept in dims.items():
            if dim < len(shape):
                shape[dim] = len(kept)
        expected[name] = shape
    seen = set()
    for name, (module, attr, _) in tensor_owners(model).items():
        old = original_name(name, plan.layers, plan.stacks)
        if old in expected:
            seen.add(old)
            actual = list(getattr(module, attr).shape)
            if expected[old] and actual != expected[old]:
                raise PlanError(f"model does not match the plan: {name!r} has shape {actual}, "
                                f"the plan leaves {expected[old]}; save the model the plan "
                                f"pruned")
    modules = dict(model.named_modules())
    for layer in plan.layers:
        if not plan.stacks and layer in modules and not isinstance(modules[layer], nn.Identity):
            raise PlanError(f"model does not match the plan: layer {layer!r} is still there")
    missing = sorted(set(expected) - seen)
    if missing:
        raise PlanError(f"model does not match the plan: it has no {missing[0]!r}")


def load(directory: str | Path, model: nn.Module) -> nn.Module:
    """Replay the saved plan on a freshly built ``model`` and load the saved weights into it.

    The model must be the same architecture the plan was made on, unpruned. The plan and the
    weights' names and shapes are checked on a data-less copy first; if anything does not
    fit, the model is left exactly as it was. A Hugging Face model's config is updated to
    the pruned sizes where one config can describe them.

    Example:
        >>> model = pk.load("pruned/", torchvision.models.resnet18())
    """
    directory = Path(directory)
    if not (directory / PLAN_FILE).is_file():
        raise PlanError(f"{str(directory)!r} has no {PLAN_FILE}; was it written by pk.save "
                        f"or pk.prune_streamed?")
    files = weight_files(directory)
    plan = Plan.load(directory / PLAN_FILE)
    converted = _check_weights_fit(model, plan, files, directory)

    def load_weights(pruned: nn.Module) -> None:
        try:
            if converted:  # fused on loading: the parts of one tensor may lie in two shards
                stored: dict[str, torch.Tensor] = {}
                for file in files:
                    stored.update(load_file(str(file)))
                pruned.load_state_dict(StoredNames(pruned).as_loaded(stored), strict=False)
            elif len(files) == 1:
                load_model(pruned, str(files[0]), strict=True)
            else:  # shards, as save_pretrained and prune_streamed write them
                for file in files:
                    pruned.load_state_dict(load_file(str(file)), strict=False)
        except RuntimeError as error:
            raise PlanError(f"weights in {str(directory)!r} do not fit the model: "
                            f"{error}") from error
        update_config(pruned)

    apply_plan(model, plan, check=load_weights)
    return model


def weight_files(directory: Path) -> list[Path]:
    """``model.safetensors``, or the shards ``model.safetensors.index.json`` lists."""
    if (directory / WEIGHTS_FILE).is_file():
        return [directory / WEIGHTS_FILE]
    index = directory / INDEX_FILE
    if index.is_file():
        try:
            shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        except (ValueError, KeyError) as error:
            raise PlanError(f"{str(index)!r} is not a safetensors index ({error})") from None
        missing = [name for name in shards if not (directory / name).is_file()]
        if missing:
            raise PlanError(f"{str(directory)!r} lacks the shard {missing[0]!r} its index "
                            f"names")
        return [directory / name for name in shards]
    raise PlanError(f"{str(directory)!r} has no {WEIGHTS_FILE} (nor shards with an index); "
                    f"was it written by pk.save or pk.prune_streamed?")


def _check_weights_fit(model: nn.Module, plan: Plan, files: list[Path],
                       directory: Path) -> bool:
    """Replay the plan on a copy of ``model`` whose tensors hold no data and compare its
    tensors with the file's names and shapes (read from its header), converted first where
    they are not the model's as transformers converts them when it loads them (experts
    stored apart, fused in the model); returns whether they were."""
    memo = {}
    for module, attr, kind in tensor_owners(model).values():
        tensor = getattr(module, attr)
        if id(tensor) not in memo:
            empty = torch.empty_like(tensor, device="meta")
            memo[id(tensor)] = (nn.Parameter(empty, requires_grad=tensor.requires_grad)
                                if kind == "parameter" else empty)
    shadow = copy.deepcopy(model, memo)
    apply_plan(shadow, plan)  # a plan that does not fit raises PlanError here
    expected: dict[str, tuple[int, ...]] = {}
    tied: dict[int, set[str]] = {}
    for name, tensor in shadow.state_dict(keep_vars=True).items():
        expected[name] = tuple(tensor.shape)
        tied.setdefault(id(tensor), set()).add(name)
    headers = {}
    for weights in files:
        with safe_open(str(weights), framework="pt") as file:
            headers.update({key: torch.empty(file.get_slice(key).get_shape(), device="meta")
                            for key in file.keys()})
    converted = not headers.keys() <= expected.keys()
    if converted:
        try:
            headers = StoredNames(shadow).as_loaded(headers)
        except Exception as error:  # a rule that does not fit what is stored
            raise PlanError(f"weights in {str(directory)!r} are not the model's, and do not "
                            f"convert as transformers loads them ({type(error).__name__}: "
                            f"{error}); was the model built as the one that was pruned?"
                            ) from error
    stored = {key: tuple(tensor.shape) for key, tensor in headers.items()}
    where = repr(str(directory))
    for key, shape in stored.items():
        if key not in expected:
            raise PlanError(f"weights in {where} hold {key!r}, which the pruned model does "
                            f"not have; was the model built as the one that was pruned?")
        if shape != expected[key]:
            raise PlanError(f"weights in {where}: {key!r} has shape {list(shape)}, the "
                            f"pruned model {list(expected[key])}")
    for names in tied.values():
        if not names & stored.keys():
            raise PlanError(f"weights in {where} lack {sorted(names)[0]!r}")
    return converted
