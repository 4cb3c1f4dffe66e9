"""Where the command line writes: an ``--out`` folder checked before any work starts and
replaced whole when the work is done (``prunekit.export.saving.replace_folder``), so a second run never
leaves the first run's files beside its own and a failure leaves the old folder as it was."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import Callable

from ..errors import ConfigError, PlanError
from ..export.saving import replace_folder

# weights and compiled exports of the unpruned model: never copied beside the pruned one
_WEIGHT_SUFFIXES = {".safetensors", ".bin", ".pt", ".pth", ".h5", ".msgpack", ".onnx", ".ckpt",
                    ".gguf", ".ot", ".tflite", ".mlmodel"}
_EXPORT_FOLDERS = {"onnx", "openvino", "coreml", "tflite"}


def check_out(out: Path, ours: set[str]) -> None:
    """``--out`` can be written and holds nothing but what this command writes there."""
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {str(out)!r} is a file; give a folder")
    if out.is_dir():
        others = sorted(p.name for p in out.iterdir() if p.name not in ours)
        if others:
            raise ConfigError(f"--out {str(out)!r} holds other files ({', '.join(others[:3])}) "
                              f"and would be replaced; give a new or empty folder")
    existing = out.parent.absolute()
    while not existing.exists():
        existing = existing.parent
    try:  # the one sure test of writability: write something there
        Path(tempfile.mkdtemp(prefix=".prunekit-probe.", dir=existing)).rmdir()
    except OSError as error:
        raise ConfigError(f"--out {str(out)!r} cannot be written ({error.strerror} in "
                          f"{str(existing)!r})") from error


def replace_out(out: Path, write: Callable[[Path], None]) -> None:
    """Write everything into a staging folder, then swap it in for ``--out``."""
    try:
        replace_folder(out, write)
    except PlanError as error:  # the current folder, say
        raise ConfigError(f"--out: {error}") from error
    except OSError as error:
        raise ConfigError(f"--out {str(out)!r} could not be written: {error}") from error


def copy_hf_extras(source: Path, target: Path, out: Path | None = None) -> list[str]:
    """Copy what ``save_pretrained`` does not write from a Hugging Face model folder: the
    tokenizer, a processor, sentence-transformers' ``modules.json`` and pooling folders.
    Files already in ``target``, weights of the unpruned model and anything under ``out``
    (an output folder inside the source: an earlier run's result) are left out."""
    copied = []
    out = out.resolve() if out is not None else None
    for path in sorted(source.rglob("*")):
        relative = path.relative_to(source)
        if out is not None and path.resolve().is_relative_to(out):
            continue
        if (not path.is_file() or (target / relative).exists()
                or path.suffix in _WEIGHT_SUFFIXES or path.name.endswith(".index.json")
                or any(part.startswith(".") or part in _EXPORT_FOLDERS
                       for part in relative.parts)):
            continue
        (target / relative).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(path, target / relative)
        copied.append(str(relative))
    return copied
