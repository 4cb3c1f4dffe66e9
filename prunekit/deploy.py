"""Deployment formats, checked: ONNX and ``torch.export``, each run back and compared.

A pruned model is only deployed once it leaves PyTorch, and an export can go wrong quietly
(a shape baked in, an op lowered differently). So every export is loaded back — ONNX in ONNX
Runtime, a ``torch.export`` program with ``torch.export.load`` — and its outputs are
compared with the PyTorch model's on the example inputs and on fresh inputs of the same
shapes. The file appears at ``path`` only when that check passed; otherwise nothing there
changes. ONNX uses the dynamo-based exporter and falls back to the TorchScript one only
where the dynamo one fails, and says so. ``quantize="int8"`` adds ONNX Runtime's dynamic
int8 quantization of the checked model's matrix multiplies (``MatMul``, ``Gemm``); its
outputs are compared and reported, not held to the float tolerance (they differ by design).
Convolutions stay float: ONNX Runtime's dynamic int8 convolution (``ConvInteger``) ran the
digits ResNet 14× slower here (``benchmarks/results/quantize.md``).

ONNX Runtime's fast convolution kernels work on blocks of 8 channels: a convolution whose
width is not a multiple of 8 takes a slower path (a digits ResNet pruned at the widths its
FLOPs budget chose ran 2.1× slower than the unpruned model in ONNX Runtime, 1.6× faster
with widths rounded to 8; same file). The report counts such convolutions; prune with ``round_to=8`` for ONNX.
"""

from __future__ import annotations

import contextlib
import inspect
import io
import logging
import os
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import torch
from torch import nn

from .arguments import check_tolerance
from .calls import call_model, evaluating, largest_difference, named_tensors
from .errors import ConfigError, PruneError
from .latency import batch_size

FORMATS = {".onnx": "onnx", ".pt2": "torch.export"}


class ExportError(PruneError):
    """The export failed, or its outputs differ from the PyTorch model's."""


@dataclass
class ExportReport:
    """What was written and what the check found."""

    path: Path
    format: str  # "onnx" or "torch.export"
    exporter: str  # "dynamo", "torchscript" (ONNX) or "torch.export"
    checked_on: str  # which inputs the outputs were compared on
    outputs: int  # output tensors compared on each input
    largest_difference: float  # relative to each output's largest magnitude
    tolerance: float
    fallback_reason: str | None = None  # why the dynamo exporter was not used
    quantized_path: Path | None = None
    quantized_difference: float | None = None  # int8 against float, relative, on the same inputs
    odd_widths: int = 0  # convolutions whose output width is not a multiple of 8
    dynamic_batch: bool = False

    def __str__(self) -> str:
        text = (f"{self.format} ({self.exporter} exporter) written to {self.path}; checked in "
                f"{'ONNX Runtime' if self.format == 'onnx' else 'torch.export.load'} against "
                f"PyTorch: {self.outputs} output tensor{'s' if self.outputs != 1 else ''} on "
                f"{self.checked_on}, largest difference {self.largest_difference:.2e} of the "
                f"output's scale (tolerance {self.tolerance:g})")
        if self.fallback_reason:
            text += f"; the dynamo exporter's file was not used ({self.fallback_reason})"
        if self.quantized_path is not None:
            text += (f"; int8 (dynamic, matrix multiplies) written to {self.quantized_path}, "
                     f"largest difference {self.quantized_difference:.2e} of the output's scale")
        if self.odd_widths and self.format == "onnx":
            text += (f". Note: {self.odd_widths} convolution{'s' if self.odd_widths > 1 else ''} "
                     f"{'have widths' if self.odd_widths > 1 else 'has a width'} that "
                     f"{'are' if self.odd_widths > 1 else 'is'} not a multiple of 8, which "
                     f"ONNX Runtime runs on a slower path: prune with round_to=8 for speed")
        return text


def export(model: nn.Module, example_inputs: Any, path: str | Path, *,
           format: str | None = None, quantize: str | None = None, tolerance: float = 1e-4,
           fresh_inputs: int = 2, dynamic_batch: bool = False, seed: int = 0) -> ExportReport:
    """Export ``model`` to ``path`` and check the export computes what the model computes.

    Args:
        model: any model ``pk.prune`` returns (or any other).
        example_inputs: what the model is called with (tensor, tuple or dict).
        path: ``*.onnx`` for ONNX, ``*.pt2`` for ``torch.export``.
        format: ``"onnx"`` or ``"torch.export"`` (default: from the suffix).
        quantize: ``"int8"``: also write ``<name>.int8.onnx``, ONNX Runtime's dynamic int8
            quantization of the checked model.
        tolerance: the largest difference allowed, relative to each output's largest value.
        fresh_inputs: how many fresh inputs of the example's shapes to check on, besides it.
        dynamic_batch: the first dim of every input (the batch) is left free in the file,
            and the check also runs a batch of another size. An example of batch 1 cannot
            be traced with a free batch (the exporters fix a size-1 dim), so the trace runs
            on a fresh batch of 2.

    Example:
        >>> pk.export(pruned, torch.randn(1, 3, 224, 224), "pruned.onnx", quantize="int8")
    """
    path = Path(path)
    format = _format(path, format)
    if quantize not in (None, "int8"):
        raise ConfigError(f"quantize={quantize!r}: use None or 'int8'")
    if quantize and format != "onnx":
        raise ConfigError(f"quantize='int8' is ONNX Runtime's quantizer: export to a .onnx path "
                          f"(got {path.name})")
    if not path.parent.is_dir():
        raise ConfigError(f"path {str(path)!r}: its folder does not exist")
    if path.is_dir():
        raise ConfigError(f"path {str(path)!r} is a folder; give a file path such as "
                          f"{str(path / ('model' + path.suffix if path.suffix else 'model.onnx'))!r}")
    check_tolerance(tolerance)
    example_inputs = _without_cache(model, example_inputs)
    if isinstance(fresh_inputs, bool) or not isinstance(fresh_inputs, int) or fresh_inputs < 0:
        raise ConfigError(f"fresh_inputs must be a whole number >= 0, got {fresh_inputs!r}")
    inputs = [example_inputs] + [fresh_like(example_inputs, seed + i) for i in range(fresh_inputs)]
    traced = example_inputs
    batch = batch_size(example_inputs)
    if dynamic_batch:
        if batch is None:
            raise ConfigError("dynamic_batch=True: the example inputs have no batch dim (their "
                              "first tensor has no dims)")
        if batch == 1:
            traced = fresh_like(example_inputs, seed + 100, batch=2)
        inputs.append(fresh_like(example_inputs, seed + 101, batch=batch + 2))
    with evaluating(model), torch.no_grad():
        try:
            expected = [_outputs(call_model(model, x)) for x in inputs]
        except Exception as error:  # noqa: BLE001 - the inputs do not fit the model
            raise ConfigError(f"example_inputs: the model does not run on them "
                              f"({type(error).__name__}: {_first_line(error)}); nothing was "
                              f"written to {path}") from error
        checked_on = (f"the example inputs and {fresh_inputs} fresh input"
                      f"{'s' if fresh_inputs != 1 else ''} of their shapes"
                      if fresh_inputs else "the example inputs")
        if dynamic_batch:
            checked_on += f", and a batch of {batch + 2} (the batch dim is free)"
        with tempfile.TemporaryDirectory(dir=path.parent, prefix=".export-") as scratch:
            written = Path(scratch) / path.name
            exporters = ("dynamo", "torchscript") if format == "onnx" else ("torch.export",)
            failures: list[str] = []
            for exporter in exporters:
                # the dynamo exporter first; the TorchScript one only where its file does not
                # export, load, run or agree
                try:
                    run = _write(exporter, model, traced, written, dynamic_batch)
                    difference = max(largest_difference(run(x), want)
                                     for x, want in zip(inputs, expected))
                except Exception as error:  # noqa: BLE001 - each failure is reported
                    failures.append(f"{exporter}: {type(error).__name__}: {_first_line(error)}")
                    continue
                if difference <= tolerance:
                    break
                failures.append(f"{exporter}: largest difference {difference:.2e} of the "
                                f"output's scale")
            else:
                raise ExportError(
                    f"the {format} export of {type(model).__name__} failed or differs from "
                    f"the model on {checked_on} (tolerance {tolerance:g}): "
                    f"{'; '.join(failures)}. Nothing was written to {path}")
            fallback = failures[0] if failures else None
            report = ExportReport(path, format, exporter, checked_on, len(expected[0]),
                                  difference, tolerance, fallback,
                                  odd_widths=sum(1 for m in model.modules()
                                                 if isinstance(m, nn.modules.conv._ConvNd)
                                                 and m.out_channels % 8),
                                  dynamic_batch=dynamic_batch)
            if quantize:
                quantized = Path(scratch) / f"{path.stem}.int8.onnx"
                _quantize_int8(written, quantized)
                run_quantized = onnx_runner(quantized)
                report.quantized_difference = max(
                    largest_difference(run_quantized(x), want) for x, want in zip(inputs, expected))
                report.quantized_path = path.with_name(quantized.name)
                os.replace(quantized, report.quantized_path)
            _move_into_place(written, path)
    return report


def _without_cache(model: nn.Module, example_inputs: Any) -> Any:
    """A Hugging Face model is exported without its key/value cache (``use_cache=False``,
    unless the inputs say otherwise): the graph is one whole forward pass, and a cache object
    is no tensor an exporter can return."""
    if not isinstance(example_inputs, dict) or "use_cache" in example_inputs:
        return example_inputs
    try:
        takes_cache = "use_cache" in inspect.signature(model.forward).parameters
    except (TypeError, ValueError):  # no signature to read
        return example_inputs
    return {**example_inputs, "use_cache": False} if takes_cache else example_inputs


def fresh_like(example_inputs: Any, seed: int, batch: int | None = None) -> Any:
    """Inputs of the example's shapes and dtypes with new values: floats drawn with the
    example's mean and spread, integers (token ids, masks) within the example's range. With
    ``batch``, every tensor whose first dim is the example's batch gets that many rows."""
    generator = torch.Generator().manual_seed(seed)
    example_batch = batch_size(example_inputs)

    def fresh(value: Any) -> Any:
        if isinstance(value, torch.Tensor):
            shape = list(value.shape)
            if batch is not None and shape and shape[0] == example_batch:
                shape[0] = batch
            if value.is_floating_point():
                spread = value.float().std() if value.numel() > 1 else torch.tensor(1.0)
                noise = torch.randn(shape, generator=generator)
                return (noise * spread + value.float().mean()).to(value.dtype)
            if value.dtype == torch.bool or value.numel() == 0:
                # a mask keeps its pattern: for another batch size, its first row repeated
                return (value.clone() if shape == list(value.shape)
                        else value[:1].expand(shape).clone())
            low, high = int(value.min()), int(value.max())
            return torch.randint(low, high + 1, shape, generator=generator, dtype=value.dtype)
        if isinstance(value, dict):
            return {key: fresh(item) for key, item in value.items()}
        if isinstance(value, (list, tuple)):
            return type(value)(fresh(item) for item in value)
        return value

    return fresh(example_inputs)


def _format(path: Path, format: str | None) -> str:
    if format is None:
        if path.suffix not in FORMATS:
            raise ConfigError(f"path {str(path)!r}: name it *.onnx or *.pt2, or pass format=")
        return FORMATS[path.suffix]
    if format not in FORMATS.values():
        raise ConfigError(f"format={format!r}: use one of {sorted(FORMATS.values())}")
    return format


def _arguments(example_inputs: Any) -> tuple[tuple, dict]:
    if isinstance(example_inputs, dict):
        return (), dict(example_inputs)
    if isinstance(example_inputs, (list, tuple)):
        return tuple(example_inputs), {}
    return (example_inputs,), {}


def _write(exporter: str, model: nn.Module, example_inputs: Any, path: Path,
           dynamic_batch: bool = False):
    """Export with one exporter to ``path``; return what runs the written file."""
    args, kwargs = _arguments(example_inputs)
    shapes = _dynamic_shapes(model, example_inputs) if dynamic_batch else None
    with _quiet():
        if exporter == "dynamo":
            program = torch.onnx.export(model, args, kwargs=kwargs or None, dynamo=True,
                                        verbose=False, optimize=True, dynamic_shapes=shapes)
            program.save(str(path))
        elif exporter == "torchscript":
            names = _input_names(example_inputs)
            torch.onnx.export(model, args + ((kwargs,) if kwargs else ()), str(path),
                              dynamo=False, input_names=names,
                              dynamic_axes=({name: {0: "batch"} for name in names}
                                            if dynamic_batch else None))
        else:
            torch.export.save(torch.export.export(model, args, kwargs or None,
                                                  dynamic_shapes=shapes), str(path))
    return _program_runner(path) if exporter == "torch.export" else onnx_runner(path)


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
        return _outputs(program(*args, **kwargs))

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


def _outputs(output: Any) -> list[torch.Tensor]:
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


def _quantize_int8(source: Path, target: Path) -> None:
    from onnxruntime.quantization import QuantType, quantize_dynamic

    with _quiet():
        quantize_dynamic(str(source), str(target), weight_type=QuantType.QInt8,
                         op_types_to_quantize=["MatMul", "Gemm"])


def _move_into_place(written: Path, path: Path) -> None:
    """The checked file replaces ``path`` in one step; an ONNX model too large for one file
    keeps its weights beside it (``<name>.data``), moved along."""
    for extra in written.parent.iterdir():
        if extra != written and extra.name.startswith(written.name):
            os.replace(extra, path.with_name(extra.name))
    os.replace(written, path)


def _first_line(error: Exception) -> str:
    """The line that says what went wrong: the exporters' own summary where they give one
    (torch.onnx puts the cause under "Exception summary", after its advice)."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    for index, line in enumerate(lines[:-1]):
        if "Exception summary" in line:
            return lines[index + 1][:300]
    return lines[0][:300] if lines else ""


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
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
