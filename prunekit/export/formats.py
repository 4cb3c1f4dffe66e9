"""Deployment formats: a registry of what ``pk.export`` can write, each a file suffix and
its exporters, tried in order, each of which writes the file and returns what runs it back.

A library adds a format with one call::

    register_export_format("tflite", ".tflite", {"litert": write_tflite},
                           checked_in="LiteRT")

where ``write_tflite(model, example_inputs, path, dynamic_batch)`` writes ``path`` and returns
``run(example_inputs) -> [output tensors]``; ``pk.export`` then checks the file like every
other (see ``prunekit.export.checked``). Built in: ONNX (the dynamo exporter, then the
TorchScript one where the dynamo one fails) and ``torch.export``.
"""


from __future__ import annotations

import contextlib
import inspect
import io
import logging
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

import torch
from torch import nn

from ..core.calls import named_tensors
from ..errors import ConfigError
from ..measure.latency import batch_size

# writer(model, example_inputs, path, dynamic_batch) writes ``path`` and returns
# run(example_inputs) -> [output tensors], running the written file
Writer = Callable[[nn.Module, Any, Path, bool], Callable[[Any], "list[torch.Tensor]"]]


@dataclass(frozen=True)
class ExportFormat:
    """A registered format: its name, file suffix, exporters in the order they are tried,
    and what runs its files back (for the report)."""

    name: str
    suffix: str
    exporters: dict[str, Writer]
    checked_in: str


_FORMATS: dict[str, ExportFormat] = {}


def register_export_format(name: str, suffix: str, exporters: dict[str, Writer], *,
                           checked_in: str) -> None:
    """Make ``pk.export(model, x, "NAME.SUFFIX")`` write ``name`` files.

    Args:
        name: what ``format=`` takes (``"onnx"``).
        suffix: the file suffix that picks it, with its dot (``".onnx"``).
        exporters: ``{exporter name: writer}``, tried in order until one's file agrees with
            the model; a writer is ``writer(model, example_inputs, path, dynamic_batch)`` and
            returns ``run(example_inputs) -> [output tensors]``.
        checked_in: what runs the file back, for the report (``"ONNX Runtime"``).
    """
    if not isinstance(name, str) or not name:
        raise ConfigError(f"register_export_format: name must be a non-empty string, got "
                          f"{name!r}")
    if not isinstance(suffix, str) or not suffix.startswith(".") or len(suffix) < 2:
        raise ConfigError(f"register_export_format({name!r}): suffix must be a file suffix "
                          f"with its dot, such as '.onnx', got {suffix!r}")
    if not exporters or not all(callable(w) for w in exporters.values()):
        raise ConfigError(f"register_export_format({name!r}): exporters must map each "
                          f"exporter's name to a callable writer")
    _FORMATS[name] = ExportFormat(name, suffix, dict(exporters), checked_in)


def export_format(path: Path, format: str | None = None) -> ExportFormat:
    """The format ``format`` names, or else the one ``path``'s suffix picks."""
    if format is None:
        found = [f for f in _FORMATS.values() if f.suffix == path.suffix]
        if not found:
            raise ConfigError(f"path {str(path)!r}: name it {suffixes()}, or pass format=")
        return found[-1]  # a later registration for a suffix wins
    if format not in _FORMATS:
        raise ConfigError(f"format={format!r}: use one of {sorted(_FORMATS)}")
    return _FORMATS[format]


def suffixes() -> str:
    """``"*.onnx or *.pt2"``: every registered format's files, for messages."""
    names = [f"*{f.suffix}" for f in _FORMATS.values()]
    return " or ".join([", ".join(names[:-1]), names[-1]] if len(names) > 1 else names)


def is_export_path(path: Path) -> bool:
    return any(f.suffix == path.suffix for f in _FORMATS.values())


def _onnx_dynamo(model: nn.Module, example_inputs: Any, path: Path, dynamic_batch: bool):
    args, kwargs = _arguments(example_inputs)
    shapes = _dynamic_shapes(model, example_inputs) if dynamic_batch else None
    with quiet():
        program = torch.onnx.export(model, args, kwargs=kwargs or None, dynamo=True,
                                    verbose=False, optimize=True, dynamic_shapes=shapes)
        program.save(str(path))
    return onnx_runner(path)


def _onnx_torchscript(model: nn.Module, example_inputs: Any, path: Path, dynamic_batch: bool):
    args, kwargs = _arguments(example_inputs)
    names = _input_names(example_inputs)
    with quiet():
        torch.onnx.export(model, args + ((kwargs,) if kwargs else ()), str(path),
                          dynamo=False, input_names=names,
                          dynamic_axes=({name: {0: "batch"} for name in names}
                                        if dynamic_batch else None))
    return onnx_runner(path)


def _torch_export(model: nn.Module, example_inputs: Any, path: Path, dynamic_batch: bool):
    args, kwargs = _arguments(example_inputs)
    shapes = _dynamic_shapes(model, example_inputs) if dynamic_batch else None
    with quiet():
        torch.export.save(torch.export.export(model, args, kwargs or None,
                                              dynamic_shapes=shapes), str(path))
    return _program_runner(path)


def _arguments(example_inputs: Any) -> tuple[tuple, dict]:
    if isinstance(example_inputs, dict):
        return (), dict(example_inputs)
    if isinstance(example_inputs, (list, tuple)):
        return tuple(example_inputs), {}
    return (example_inputs,), {}


def _dynamic_shapes(model: nn.Module, example_inputs: Any) -> dict[str, Any]:
    """``{forward's parameter: {0: Dim.DYNAMIC}}`` for every tensor input with the batch's
    first dim; other inputs stay fixed."""
    from torch.export import Dim

    args, kwargs = _arguments(example_inputs)
    bound = inspect.signature(model.forward).bind(*args, **kwargs)
    batch = batch_size(example_inputs)

    def spec(value: Any) -> Any:
        if isinstance(value, torch.Tensor):
            return {0: Dim.DYNAMIC} if value.dim() and value.shape[0] == batch else None
        if isinstance(value, (list, tuple)):
            return type(value)(spec(item) for item in value)
        if isinstance(value, dict):
            return {key: spec(item) for key, item in value.items()}
        return None

    return {name: spec(value) for name, value in bound.arguments.items()}


def onnx_runner(path: Path, threads: int | None = None):
    """What runs an ONNX file in ONNX Runtime (CPU) like the model it came from:
    ``run(example_inputs) -> [output tensors]``. With ``threads``, the session uses that many
    intra-op threads and does not spin between calls, so two sessions timed in turns do not
    each keep a core busy waiting while the other runs."""
    try:
        import onnxruntime
    except ImportError as error:
        raise ImportError("checking an ONNX export needs ONNX Runtime: "
                          "pip install 'prunekit[export]'") from error

    options = onnxruntime.SessionOptions()
    options.log_severity_level = 3
    if threads is not None:
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    session = onnxruntime.InferenceSession(str(path), options,
                                           providers=["CPUExecutionProvider"])
    names = [i.name for i in session.get_inputs()]

    def run(example_inputs: Any) -> list[torch.Tensor]:
        given = _flat_inputs(example_inputs)
        if all(name in given for name in names):  # by name where the names are the model's
            feed = {name: given[name] for name in names}
        else:  # else by position (the exporter drops inputs the graph does not read)
            feed = dict(zip(names, given.values()))
        return [torch.from_numpy(array) for array in session.run(None, feed)]

    return run


def _program_runner(path: Path):
    program = torch.export.load(str(path)).module()

    def run(example_inputs: Any) -> list[torch.Tensor]:
        args, kwargs = _arguments(example_inputs)
        return output_tensors(program(*args, **kwargs))

    return run


def _flat_inputs(example_inputs: Any) -> dict[str, Any]:
    """Every tensor input by the name the exporters give it, as numpy arrays."""
    return {name: value.detach().cpu().numpy()
            for name, value in zip(_input_names(example_inputs),
                                   _input_tensors(example_inputs))}


def _input_tensors(example_inputs: Any) -> list[torch.Tensor]:
    """Every tensor in the inputs, nested lists (a detector's list of images) included, in
    the order the exporters flatten them."""
    args, kwargs = _arguments(example_inputs)
    return [t for _, t in named_tensors(list(args) + list(kwargs.values()))]


def _input_names(example_inputs: Any) -> list[str]:
    """The names the exporters give the tensor inputs: a dict's keys (its flags such as
    ``use_cache`` are constants, not inputs), else ``input_0``, ``input_1`` …"""
    if isinstance(example_inputs, dict):
        names = [k for k, v in example_inputs.items() if isinstance(v, torch.Tensor)]
        if len(names) == len(_input_tensors(example_inputs)):
            return names
    return [f"input_{i}" for i, _ in enumerate(_input_tensors(example_inputs))]


def output_tensors(output: Any) -> list[torch.Tensor]:
    """The output tensors in the order the exporters flatten them (``torch.utils._pytree``,
    a tensor reached twice counted twice, as the exported graph returns it twice); objects
    pytree does not know are walked like every other output (``named_tensors``)."""
    from torch.utils._pytree import tree_leaves

    leaves = tree_leaves(output)
    tensors = [leaf for leaf in leaves if isinstance(leaf, torch.Tensor)]
    if not tensors or any(not isinstance(leaf, (torch.Tensor, int, float, bool, str,
                                                 type(None))) for leaf in leaves):
        tensors = [t for _, t in named_tensors(output)]
    return [t.detach().float() for t in tensors]


def quantize_int8(source: Path, target: Path) -> None:
    from onnxruntime.quantization import QuantType, quantize_dynamic

    with quiet():
        quantize_dynamic(str(source), str(target), weight_type=QuantType.QInt8,
                         op_types_to_quantize=["MatMul", "Gemm"])


@contextlib.contextmanager
def quiet() -> Iterator[None]:
    """The exporters print progress and warnings of their own; the report says what matters."""
    # "" is the root logger, where ONNX Runtime's quantizer logs its advice
    loggers = [logging.getLogger(name) for name in ("", "torch.onnx", "onnxscript",
                                                    "torch.export", "torch._dynamo",
                                                    "torch._export")]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()), \
                contextlib.redirect_stderr(io.StringIO()):
            warnings.simplefilter("ignore")
            yield
    finally:
        for logger, level in zip(loggers, levels):
            logger.setLevel(level)


register_export_format("onnx", ".onnx", {"dynamo": _onnx_dynamo, "torchscript": _onnx_torchscript},
                       checked_in="ONNX Runtime")
register_export_format("torch.export", ".pt2", {"torch.export": _torch_export},
                       checked_in="torch.export.load")
