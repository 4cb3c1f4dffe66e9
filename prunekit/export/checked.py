"""``pk.export``: a model written in a deployment format (``formats``) and checked: run back and
compared.

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

import inspect
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..core.arguments import check_tolerance, check_whole
from ..core.calls import call_model, evaluating, largest_difference
from ..errors import ConfigError, PruneError
from ..measure.latency import batch_size
from .formats import (
    ExportFormat,
    export_format,
    onnx_runner,
    output_tensors,
    quantize_int8,
)


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
    checked_in: str = "ONNX Runtime"  # what ran the file back

    def __str__(self) -> str:
        text = (f"{self.format} ({self.exporter} exporter) written to {self.path}; checked in "
                f"{self.checked_in} against "
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
    chosen = export_format(path, format)
    _check_arguments(path, chosen, quantize, tolerance, fresh_inputs)
    example_inputs = _without_cache(model, example_inputs)
    traced, inputs, checked_on = _inputs_to_check(example_inputs, fresh_inputs, dynamic_batch,
                                                  seed)
    with evaluating(model), torch.no_grad():
        try:
            expected = [output_tensors(call_model(model, x)) for x in inputs]
        except Exception as error:  # noqa: BLE001 - the inputs do not fit the model
            raise ConfigError(f"example_inputs: the model does not run on them "
                              f"({type(error).__name__}: {_first_line(error)}); nothing was "
                              f"written to {path}") from error
        with tempfile.TemporaryDirectory(dir=path.parent, prefix=".export-") as scratch:
            written = Path(scratch) / path.name
            exporter, difference, failures = _first_that_agrees(
                chosen, model, traced, written, dynamic_batch, list(zip(inputs, expected)),
                tolerance)
            if exporter is None:
                raise ExportError(
                    f"the {chosen.name} export of {type(model).__name__} failed or differs "
                    f"from the model on {checked_on} (tolerance {tolerance:g}): "
                    f"{'; '.join(failures)}. Nothing was written to {path}")
            report = ExportReport(path, chosen.name, exporter, checked_on, len(expected[0]),
                                  difference, tolerance, failures[0] if failures else None,
                                  odd_widths=sum(1 for m in model.modules()
                                                 if isinstance(m, nn.modules.conv._ConvNd)
                                                 and m.out_channels % 8),
                                  dynamic_batch=dynamic_batch, checked_in=chosen.checked_in)
            if quantize:
                quantized = Path(scratch) / f"{path.stem}.int8.onnx"
                quantize_int8(written, quantized)
                run_quantized = onnx_runner(quantized)
                report.quantized_difference = max(
                    largest_difference(run_quantized(x), want) for x, want in zip(inputs, expected))
                report.quantized_path = path.with_name(quantized.name)
                os.replace(quantized, report.quantized_path)
            _move_into_place(written, path)
    return report


def _check_arguments(path: Path, chosen: ExportFormat, quantize: str | None, tolerance: float,
                     fresh_inputs: int) -> None:
    if quantize not in (None, "int8"):
        raise ConfigError(f"quantize={quantize!r}: use None or 'int8'")
    if quantize and chosen.name != "onnx":
        raise ConfigError(f"quantize='int8' is ONNX Runtime's quantizer: export to a .onnx path "
                          f"(got {path.name})")
    if not path.parent.is_dir():
        raise ConfigError(f"path {str(path)!r}: its folder does not exist")
    if path.is_dir():
        raise ConfigError(f"path {str(path)!r} is a folder; give a file path such as "
                          f"{str(path / ('model' + path.suffix if path.suffix else 'model.onnx'))!r}")
    check_tolerance(tolerance)
    check_whole(fresh_inputs, "fresh_inputs", minimum=0)


def _inputs_to_check(example_inputs: Any, fresh_inputs: int, dynamic_batch: bool, seed: int
                     ) -> tuple[Any, list, str]:
    """What the exporter traces, every input the file is checked on, and what those are."""
    inputs = [example_inputs] + [fresh_like(example_inputs, seed + i) for i in range(fresh_inputs)]
    traced = example_inputs
    checked_on = (f"the example inputs and {fresh_inputs} fresh input"
                  f"{'s' if fresh_inputs != 1 else ''} of their shapes"
                  if fresh_inputs else "the example inputs")
    if dynamic_batch:
        batch = batch_size(example_inputs)
        if batch is None:
            raise ConfigError("dynamic_batch=True: the example inputs have no batch dim (their "
                              "first tensor has no dims)")
        if batch == 1:
            traced = fresh_like(example_inputs, seed + 100, batch=2)
        inputs.append(fresh_like(example_inputs, seed + 101, batch=batch + 2))
        checked_on += f", and a batch of {batch + 2} (the batch dim is free)"
    return traced, inputs, checked_on


def _first_that_agrees(chosen: ExportFormat, model: nn.Module, traced: Any, written: Path,
                       dynamic_batch: bool, pairs: list, tolerance: float
                       ) -> tuple[str | None, float, list[str]]:
    """The format's exporters in turn (ONNX: the dynamo one, then the TorchScript one) until
    one's file exports, loads, runs and agrees with the model on every ``(input, expected)``
    pair: its name (None if none did), its largest difference, and why each before it
    failed."""
    failures: list[str] = []
    for exporter, write in chosen.exporters.items():
        try:
            run = write(model, traced, written, dynamic_batch)
            difference = max(largest_difference(run(x), want) for x, want in pairs)
        except Exception as error:  # noqa: BLE001 - each failure is reported
            failures.append(f"{exporter}: {type(error).__name__}: {_first_line(error)}")
            continue
        if difference <= tolerance:
            return exporter, difference, failures
        failures.append(f"{exporter}: largest difference {difference:.2e} of the output's "
                        f"scale")
    return None, float("inf"), failures


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
