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
import warnings
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import load_file, load_model, save_model
from torch import nn

from ..errors import ConfigError, PlanError
from ..plan import Plan, original_name
from ..surgery.apply import apply_plan, tensor_owners
from ..surgery.configs import update_config

WEIGHTS_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"
PLAN_FILE = "plan.json"
CHECKPOINT_FILES = {WEIGHTS_FILE, PLAN_FILE}

# the dtype a safetensors header names, as a torch dtype
STORED_DTYPES = {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16,
                 "BF16": torch.bfloat16, "I64": torch.int64, "I32": torch.int32,
                 "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8, "BOOL": torch.bool,
                 "F8_E4M3": torch.float8_e4m3fn, "F8_E5M2": torch.float8_e5m2,
                 "C64": torch.complex64}


def shard_path(folder: Path, name: Any, index: Path) -> Path:
    """The shard ``name`` that ``index`` lists, which must be a file name inside ``folder``:
    an index naming ``../elsewhere.safetensors`` or an absolute path would load weights from
    outside the checkpoint."""
    if not isinstance(name, str) or not name or Path(name).is_absolute() or any(
            part in ("..", "") for part in Path(name).parts) or "\\" in name:
        raise ConfigError(f"{str(index)!r} names the shard {name!r}, which is not a file name "
                          f"inside its folder; refusing to read weights from elsewhere")
    path = folder / name
    if not path.resolve().is_relative_to(folder.resolve()):  # through a symbolic link
        raise ConfigError(f"{str(index)!r} names the shard {name!r}, which leads outside its "
                          f"folder; refusing to read weights from elsewhere")
    return path


def read_header(path: Path) -> dict[str, tuple[list[int], str]]:
    """Every tensor's shape and dtype string in one safetensors file, from its header; a
    file that is not safetensors (truncated, corrupt) is one ``ConfigError``."""
    try:
        with safe_open(str(path), framework="pt") as handle:
            found = {}
            for name in handle.keys():
                view = handle.get_slice(name)
                found[name] = (list(view.get_shape()), view.get_dtype())
            return found
    except Exception as error:  # safetensors raises its own SafetensorError, OSError …
        raise ConfigError(f"{str(path)!r} is not a readable safetensors file "
                          f"({type(error).__name__}: {str(error).splitlines()[0][:200]}); "
                          f"was it cut short or changed?") from error


def read_index(index: Path) -> dict[str, str]:
    """The ``weight_map`` of a safetensors index: tensor name -> shard file name."""
    try:
        mapping = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
    except (ValueError, KeyError, TypeError, RecursionError) as error:
        raise ConfigError(f"{str(index)!r} is not a safetensors index "
                          f"({type(error).__name__}: {str(error)[:200]})") from None
    if not isinstance(mapping, dict):
        raise ConfigError(f"{str(index)!r} is not a safetensors index (its weight_map is a "
                          f"{type(mapping).__name__}, not a table of names)")
    return mapping



# how a model family's checkpoints name tensors the loaded model holds under other names
# (transformers fuses a mixture of experts' stored projections): ``convert(model, tensors)``
# returns the tensors as the loaded model names them; Hugging Face registers one
_NAME_CONVERSIONS: list = []


def register_stored_names(convert) -> None:
    """Register ``convert(model, tensors) -> tensors``: a stored checkpoint's tensors renamed
    and fused as the loaded ``model`` holds them (``pk.load`` tries it where the names of a
    file are not the model's)."""
    _NAME_CONVERSIONS.insert(0, convert)


def _as_loaded(model: nn.Module, tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    for convert in _NAME_CONVERSIONS:
        return convert(model, tensors)
    return tensors



def save(model: nn.Module, directory: str | Path, plan: Plan) -> Path:
    """Write ``model.safetensors`` and ``plan.json`` into ``directory``.

    The model must be the one ``plan`` pruned (its shapes are checked against the plan). The
    files are written into a new folder beside ``directory`` that replaces it only when
    complete, so a failure (a full disk) leaves any earlier checkpoint there as it was. A
    folder holding anything but a checkpoint is refused rather than replaced.

    Example:
        >>> pk.save(model, "pruned/", result.plan)
    """
    directory = _target_of(Path(directory))
    if directory.exists():
        if not directory.is_dir():
            raise PlanError(f"cannot save to {str(directory)!r}: it is a file")
        others = sorted(p.name for p in directory.iterdir() if p.name not in CHECKPOINT_FILES)
        if others:
            raise PlanError(f"cannot save to {str(directory)!r}: it holds other files "
                            f"({', '.join(others[:3])}), and saving replaces the folder; "
                            f"choose a new or empty folder")
    try:
        return replace_folder(directory, lambda folder: write_checkpoint(model, folder, plan))
    except OSError as error:  # a full disk, a file where a folder should be, no permission
        raise PlanError(f"cannot save to {str(directory)!r}: {error.strerror or error}"
                        f"{f' ({error.filename})' if error.filename else ''}; nothing was "
                        f"changed there") from error


def write_checkpoint(model: nn.Module, folder: Path, plan: Plan) -> None:
    """The checkpoint's files, written into ``folder`` as they are (``save`` stages them)."""
    check_matches_plan(model, plan)
    save_model(model, str(folder / WEIGHTS_FILE))
    as_umask_allows(folder / WEIGHTS_FILE)
    plan.save(folder / PLAN_FILE)


def replace_folder(directory: Path, write) -> Path:
    """Run ``write(folder)`` on a new folder beside ``directory``, then swap it in for
    ``directory``; on any error (an interrupt too) the new folder is removed and
    ``directory`` is untouched.

    A symbolic link is followed: the folder it points to is replaced and the link kept. The
    staging and backup folders carry this process's id, so a save killed mid-write leaves
    nothing behind for long: the next save to the same place removes what a dead process
    left (and puts back a previous checkpoint it had moved aside)."""
    directory = _target_of(Path(directory))
    directory.parent.mkdir(parents=True, exist_ok=True)
    _clean_stale(directory)
    staging = Path(tempfile.mkdtemp(prefix=f".{directory.name}.partial-{os.getpid()}-",
                                    dir=directory.parent))
    os.chmod(staging, 0o777 & ~_umask())  # mkdtemp's 0700 would make the result private
    try:
        write(staging)
        if directory.exists():
            backup = Path(tempfile.mkdtemp(prefix=f".{directory.name}.old-{os.getpid()}-",
                                           dir=directory.parent))
            try:
                os.replace(directory, backup / "previous")
                try:
                    os.replace(staging, directory)
                except BaseException:
                    os.replace(backup / "previous", directory)
                    raise
            finally:  # emptied when the swap was undone, the old checkpoint when it was done;
                # kept only if putting the old checkpoint back failed too (a later save does)
                if directory.exists() or not (backup / "previous").exists():
                    shutil.rmtree(backup, ignore_errors=True)
        else:
            os.replace(staging, directory)
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
    return directory


def _target_of(directory: Path) -> Path:
    """Where a save to ``directory`` writes: the folder a symbolic link points to (even one
    not there yet), never the current folder or one above it (it cannot be swapped out)."""
    target = directory.resolve() if directory.is_symlink() else directory.absolute()
    target = Path(os.path.normpath(target))
    if target == Path.cwd() or target in Path.cwd().parents or target.parent == target:
        raise PlanError(f"cannot save to {str(directory)!r}: it is the current folder or one "
                        f"above it, which saving would replace; name a new folder inside it")
    return target


def as_umask_allows(path: Path) -> None:
    """Give a written file the permissions a plain ``open`` would (safetensors writes its
    files readable by their owner alone)."""
    os.chmod(path, 0o666 & ~_umask())


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _clean_stale(directory: Path) -> None:
    """Remove the staging folders of saves to ``directory`` whose process is gone, and put a
    checkpoint such a save had moved aside back in place if nothing replaced it."""
    for leftover in sorted(directory.parent.glob(f".{directory.name}.*-*-*")):
        kind, _, rest = leftover.name[len(directory.name) + 2:].partition("-")
        pid = rest.partition("-")[0]
        if kind not in ("partial", "old") or not pid.isdigit() or _alive(int(pid)):
            continue
        previous = leftover / "previous"
        if kind == "old" and previous.is_dir() and not directory.exists():
            os.replace(previous, directory)
        shutil.rmtree(leftover, ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


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


def load(model: nn.Module, directory: str | Path) -> nn.Module:
    """Replay the saved plan on a freshly built ``model`` and load the saved weights into it.

    The model comes first, as in ``pk.save(model, directory, plan)``; the older order,
    ``load(directory, model)``, still works and warns.

    The model must be the same architecture the plan was made on, unpruned. The plan and the
    weights' names and shapes are checked on a data-less copy first; if anything does not
    fit, the model is left exactly as it was. A Hugging Face model's config is updated to
    the pruned sizes where one config can describe them.

    Example:
        >>> model = pk.load(torchvision.models.resnet18(), "pruned/")
    """
    if isinstance(model, (str, os.PathLike)) and isinstance(directory, nn.Module):
        warnings.warn("pk.load(directory, model) is deprecated: pass the model first, as "
                      "pk.save does: pk.load(model, directory)", DeprecationWarning,
                      stacklevel=2)
        model, directory = directory, model
    if not isinstance(model, nn.Module):
        raise ConfigError(f"pk.load: model must be the freshly built torch.nn.Module to load "
                          f"into, got {type(model).__name__}")
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
                pruned.load_state_dict(_as_loaded(pruned, stored), strict=False)
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
            shards = [shard_path(directory, name, index)
                      for name in sorted(set(read_index(index).values()), key=str)]
        except ConfigError as error:
            raise PlanError(str(error)) from None
        missing = [path.name for path in shards if not path.is_file()]
        if missing:
            raise PlanError(f"{str(directory)!r} lacks the shard {missing[0]!r} its index "
                            f"names")
        return shards
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
    dtypes: dict[str, torch.dtype] = {}
    for name, tensor in shadow.state_dict(keep_vars=True).items():
        expected[name] = tuple(tensor.shape)
        dtypes[name] = tensor.dtype
        tied.setdefault(id(tensor), set()).add(name)
    headers = {}
    for weights in files:
        try:
            header = read_header(weights)
        except ConfigError as error:
            raise PlanError(str(error)) from None
        for key, (shape, dtype) in header.items():
            if dtype not in STORED_DTYPES:
                raise PlanError(f"weights in {str(weights)!r}: {key!r} is stored as {dtype}, "
                                f"a dtype prunekit does not load")
            headers[key] = torch.empty(shape, dtype=STORED_DTYPES[dtype], device="meta")
    converted = not headers.keys() <= expected.keys()
    if converted:
        try:
            headers = _as_loaded(shadow, headers)
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
        # the same bytes read as another dtype are other numbers (an F32 bias relabelled I32
        # loads as 1e9): a file must store each tensor in the model's own dtype
        if headers[key].dtype != dtypes[key]:
            raise PlanError(f"weights in {where}: {key!r} is stored as "
                            f"{str(headers[key].dtype).replace('torch.', '')}, the model's is "
                            f"{str(dtypes[key]).replace('torch.', '')}; convert the model "
                            f"to the saved dtype before loading (model.to(dtype))")
    for names in tied.values():
        if not names & stored.keys():
            raise PlanError(f"weights in {where} lack {sorted(names)[0]!r}")
    return converted
