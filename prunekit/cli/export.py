"""``prunekit export`` and ``prunekit analyze``: a model (pruned or not) written in a
deployment format and checked; what a method would prune, before pruning."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.markup import escape

from ..core.progress import Step
from ..errors import ConfigError, PruneError
from ..export.checked import export as export_model
from ..export.formats import is_export_path, suffixes
from ..export.saving import load as load_pruned
from .app import (
    CHECKPOINT_HELP,
    METHOD_HELP,
    MODEL_HELP,
    TRUST_PICKLE_HELP,
    app,
    console,
    fail,
    measure_unpruned,
    method_from_options,
    progress,
    show,
)
from .sources import example_inputs, load_model


@app.command()
def export(
    model: str = typer.Option(..., help=MODEL_HELP),
    checkpoint: Path = typer.Option(None, help=CHECKPOINT_HELP),
    trust_pickle: bool = typer.Option(False, help=TRUST_PICKLE_HELP),
    pruned: Path = typer.Option(None, help="a folder `prunekit prune` wrote: its plan and "
                                           "weights are loaded onto --model first"),
    input_shape: str = typer.Option(None, help="example input shape (as for prune); the "
                                               "export takes these shapes"),
    out: Path = typer.Option(..., help="the file to write: NAME.onnx (ONNX) or NAME.pt2 "
                                       "(torch.export)"),
    int8: bool = typer.Option(False, help="also write NAME.int8.onnx, ONNX Runtime's dynamic "
                                          "int8 quantization, and report how far it moved"),
    tolerance: float = typer.Option(1e-4, help="largest difference from PyTorch allowed, "
                                               "relative to each output's largest value"),
    dynamic_batch: bool = typer.Option(False, help="leave the batch dim free in the file (and "
                                                   "check a batch of another size too)"),
    fuse: bool = typer.Option(False, help="fold each BatchNorm into the convolution before it "
                                          "first (pk.fuse, checked equal to the unfused model)"),
) -> None:
    """Export a model (pruned or not) to ONNX or torch.export and check the file: it is run
    back (ONNX Runtime, torch.export.load) on the example inputs and fresh inputs of their
    shapes and compared with PyTorch. OUT is written only when the check passes."""
    fused = None
    try:
        _check_export_options(out, int8, tolerance)
        network = load_model(model, checkpoint, trust_pickle).eval()
        if pruned is not None:
            if not (pruned / "plan.json").is_file():
                raise ConfigError(f"--pruned {str(pruned)!r}: no plan.json there; give the "
                                  f"folder `prunekit prune --out` wrote")
            load_pruned(network, pruned)
        x = example_inputs(network, input_shape)
        measure_unpruned(network, x)  # inputs the model cannot run name --input-shape
        with progress() as report_step:
            if fuse:
                from ..surgery.fusion import fuse as fuse_model

                report_step(Step("folding BatchNorm layers and checking the fused model"))
                fused = fuse_model(network, x, tolerance=tolerance)
            report_step(Step(f"exporting to {out.name} and checking it"))
            report = export_model(network, x, out, quantize="int8" if int8 else None,
                                  tolerance=tolerance, dynamic_batch=dynamic_batch)
    except (PruneError, ConfigError) as error:
        fail(error)
    if fused is not None:
        console.print(f"[green]fused:[/] {escape(str(fused))}")
    console.print(f"[green]checked:[/] {escape(str(report))}")


def _check_export_options(out: Path, int8: bool, tolerance: float) -> None:
    """What can be refused before the model is built."""
    if not is_export_path(out):
        raise ConfigError(f"--out {str(out)!r}: name it {suffixes()}")
    if int8 and out.suffix != ".onnx":
        raise ConfigError(f"--int8 is ONNX Runtime's quantizer: give an --out NAME.onnx "
                          f"(got {out.name})")
    if not out.parent.is_dir():
        raise ConfigError(f"--out {str(out)!r}: the folder {str(out.parent)!r} does not "
                          f"exist")
    if not tolerance >= 0:
        raise ConfigError(f"--tolerance {tolerance}: give a fraction >= 0 of each "
                          f"output's scale (default 1e-4)")


@app.command()
def analyze(
    model: str = typer.Option(..., help=MODEL_HELP),
    checkpoint: Path = typer.Option(None, help=CHECKPOINT_HELP),
    trust_pickle: bool = typer.Option(False, help=TRUST_PICKLE_HELP),
    input_shape: str = typer.Option(None, help="example input shape (as for prune)"),
    method: str = typer.Option("filter", help=METHOD_HELP),
    ratio: float = typer.Option(0.5, help="ratio used for the 'would remove' column"),
    limit: int = typer.Option(40, help="show at most this many candidates"),
) -> None:
    """Print what a method would prune: its candidates (groups of coupled channels, heads,
    layers) and what each would lose."""
    try:
        pruning = method_from_options(method, None, optional={"ratio": ratio})
        network = load_model(model, checkpoint, trust_pickle).eval()
        x = example_inputs(network, input_shape)
        with progress() as report:
            report(Step(f"tracing {model}"))
            preview = pruning.preview(network, x)
    except (PruneError, ConfigError) as error:
        fail(error)
    table = preview.table(limit)
    show(table, title=f"{model}: {table.title} for {pruning.summary()}")
