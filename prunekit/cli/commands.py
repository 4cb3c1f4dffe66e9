"""The ``prunekit`` command: prune, analyze, iterative, sensitivity, compare and demo."""

from __future__ import annotations

import copy
import itertools
import json
import re
import sys
from contextlib import contextmanager
from pathlib import Path

import torch

try:
    import typer
    from rich.console import Console
    from rich.markup import escape
    from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
    from rich.table import Table
except ImportError as error:  # the command line is an extra
    raise SystemExit("the prunekit command needs its extra: pip install 'prunekit[cli]'") from error

from ..api import prune as prune_model
from ..errors import ConfigError, PlanError, PruneError, TraceError, did_you_mean
from ..importance import criterion_names, get_criterion
from ..io import write_checkpoint
from ..latency import compare_latency, speedup_cell
from ..measure import measure
from ..methods import LayerPruning, PruningMethod, cli_methods
from .output import check_out, copy_hf_extras, replace_out
from .sources import example_inputs, first_inputs, load_data, load_model, parse_ratios

app = typer.Typer(help="Structured pruning for PyTorch models.", no_args_is_help=True,
                  pretty_exceptions_enable=False)
# without a terminal (a pipe, a CI log) rich would assume 80 columns and cut table cells to
# "(influen…"; a log has room, so tables keep their full text there
console = Console(width=None if sys.stdout.isatty() else 200)

METHOD_HELP = " | ".join(cli_methods())
MODEL_HELP = ("torchvision:NAME, timm:NAME, hf:PATH, ultralytics:yolo11n.yaml (or a .pt file), "
              "open_clip:NAME (its image tower) or path/to/file.py:factory")
CHECKPOINT_HELP = ("trained weights to load before pruning: a state dict in .safetensors or a "
                   "PyTorch file (read with weights_only=True)")
TRUST_PICKLE_HELP = ("read an Ultralytics .pt file as Ultralytics does, by unpickling it, which "
                     "can run code stored in the file: only for a file you trust (by default "
                     "only PyTorch and Ultralytics module classes may be named in it)")
# random example inputs carry no labels: rank layers by a label-free criterion by default
DEFAULT_CRITERIA = {"layers": "influence"}
CRITERION_HELP = ("channels: " + ", ".join(criterion_names("channels"))
                  + "; heads: " + ", ".join(criterion_names("heads"))
                  + "; layers: " + ", ".join(criterion_names("layers"))
                  + ". Default l1, influence for layers")


def _fail(error: Exception) -> None:
    """One line on stderr; exit code 2 for a mistake in the options or inputs, 1 when the
    pruning itself could not be done."""
    text = " ".join(line.strip() for line in str(error).splitlines() if line.strip())
    # the option the user typed, not the Python field behind it: "--criterion", not
    # "FilterPruning.criterion"
    text = re.sub(r"\b[A-Z][A-Za-z]*Pruning\.([a-z_]+)",
                  lambda field: "--" + field.group(1).replace("_", "-"), text)
    typer.echo(f"error: {text}", err=True)  # one line, whatever the message held
    mistake = isinstance(error, (ConfigError, TraceError, PlanError))
    raise typer.Exit(code=2 if mistake else 1)


@app.command()
def prune(
    model: str = typer.Option(..., help=MODEL_HELP),
    checkpoint: Path = typer.Option(None, help=CHECKPOINT_HELP),
    trust_pickle: bool = typer.Option(False, help=TRUST_PICKLE_HELP),
    input_shape: str = typer.Option(None, help="example input shape (default 1,3,224,224; "
                                               "BATCH,TOKENS = 2,16 for text models)"),
    method: str = typer.Option("filter", help=METHOD_HELP),
    ratio: float = typer.Option(0.5, help="fraction of each group's channels (or heads) to remove"),
    n: int = typer.Option(1, help="--method layers: how many layers or blocks to remove"),
    criterion: str = typer.Option(None, help=CRITERION_HELP),
    round_to: str = typer.Option("1", help="keep a multiple of this many channels, or "
                                           "'measured': widths timed on this machine"),
    flops_target: float = typer.Option(None, help="remove this fraction of FLOPs instead of --ratio"),
    latency_target: float = typer.Option(None, help="filter/channel: run in this fraction of "
                                                    "the unpruned time (0.5: twice as fast), "
                                                    "timed on this machine with these inputs "
                                                    "and --threads, instead of --ratio"),
    global_ranking: bool = typer.Option(False, help="rank channels across the whole model"),
    reconstruct: bool = typer.Option(False, help="channel/heads: re-fit the layers that lost "
                                                 "inputs by least squares on the calibration "
                                                 "batches (--data), no training"),
    data: str = typer.Option(None, help="DATA_SOURCE:FACTORY returning (train, test) batches "
                                        "(the model's inputs, or (inputs, labels) for criteria "
                                        "that read a loss); data-driven criteria and "
                                        "--reconstruct read up to --calibration-batches "
                                        "training batches (default: the example inputs)"),
    calibration_batches: int = typer.Option(8, min=1, help="training batches data-driven "
                                                                 "criteria read"),
    out: Path = typer.Option(..., help="directory for model.safetensors and plan.json"),
    check: bool = typer.Option(True, help="verify masked and pruned models agree"),
    latency: bool = typer.Option(True, help="time the model before and after pruning, "
                                            "interleaved in one process (holds a copy of "
                                            "the unpruned model meanwhile)"),
    threads: int = typer.Option(None, help="threads latency is timed with (default: as many "
                                           "as torch uses)"),
    stream: bool = typer.Option(False, help="for hf:PATH decoders bigger than memory: read, "
                                            "prune and write one block at a time from the "
                                            "folder's safetensors; OUT becomes a Hugging Face "
                                            "folder (filter/channel/heads: --ratio of every "
                                            "block; layers: --n)"),
) -> None:
    """Prune a model and save the result (weights + plan; a Hugging Face model whose config
    describes the pruned sizes is also saved with save_pretrained, in OUT/hf, with the
    source's tokenizer and sentence-transformers files; they go to OUT/tokenizer when no
    config can describe the pruned model). OUT is replaced as a whole."""
    try:
        pruning = _method(method, criterion, ratio=ratio, n=n, round_to=_round_to(round_to),
                          flops_target=flops_target, latency_target=latency_target,
                          global_ranking=global_ranking, reconstruct=reconstruct or None)
        if reconstruct and not hasattr(pruning, "reconstruct"):
            raise ConfigError(f"--reconstruct: --method {method} has no reconstruction; use "
                              f"--method channel or heads")
        if stream:
            _prune_streamed(model, checkpoint, pruning, data, calibration_batches, out)
            return
        check_out(out, {"model.safetensors", "plan.json", "hf", "tokenizer"})
        if latency_target is not None and not hasattr(pruning, "latency_target"):
            raise ConfigError(f"--latency-target: --method {method} has no latency target; "
                              f"use --method filter or channel")
        if threads is not None:
            if threads < 1:
                raise ConfigError(f"--threads {threads}: give a positive number")
            torch.set_num_threads(threads)  # for the search's timings as for the report's
        network = load_model(model, checkpoint, trust_pickle).eval()
        if data is None:
            x = example_inputs(network, input_shape)
            calibration = [x]  # random inputs: enough to run a data-driven criterion, no more
        else:
            train, _ = load_data(data)
            x = first_inputs(train, labels=False)
            calibration = list(itertools.islice(train, calibration_batches))
        with _progress(f"pruning {model}"):
            before = _measure_unpruned(network, x)
            original = _copy_for_timing(network) if latency else None
            result = prune_model(network, x, pruning, data=calibration, check=check)
            after = measure(network, x, latency=False)
        speed = None
        if original is not None:
            with _progress("timing the unpruned and pruned models, interleaved"):
                speed = compare_latency(original, network, x, threads=threads)
            del original
        hf_source = Path(model[3:]) if model.startswith("hf:") else None

        def write(folder: Path) -> None:
            write_checkpoint(network, folder, result.plan)
            if result.config_matches:
                network.save_pretrained(folder / "hf")
            if hf_source is not None:  # with the model, or alone beside the pk.load files
                copy_hf_extras(hf_source, folder / ("hf" if result.config_matches
                                                    else "tokenizer"), out)

        replace_out(out, write)
    except (PruneError, ConfigError) as error:
        _fail(error)
    _print_sizes(model, pruning, before, after, speed)
    if data is None and _reads_data(pruning):
        console.print(f"[yellow]note:[/] criterion {escape(repr(pruning.criterion))} reads "
                      f"activations, and without --data it ran on the random example inputs "
                      f"only; pass --data for a ranking that means something")
    if data is None and reconstruct:
        console.print("[yellow]note:[/] --reconstruct re-fitted the layers on the random "
                      "example inputs only, without --data; pass --data for a fit that "
                      "means something")
    for line in result.details():  # what print(result) says, as it says it
        console.print(escape(line))
    console.print(f"saved to {out}/ (model.safetensors, plan.json)")
    if result.config_matches:
        console.print(f"also saved with save_pretrained to {out / 'hf'}/ "
                      f"(from_pretrained reloads it)")
    elif result.config_matches is False:
        console.print("the pruned sizes differ from what one config can describe: reload it "
                      "with pk.load" + (f"; the tokenizer and other files of the source are "
                                        f"in {out / 'tokenizer'}/" if model.startswith("hf:")
                                        else ""))


def _prune_streamed(model: str, checkpoint: Path | None, pruning: PruningMethod,
                    data: str | None, calibration_batches: int, out: Path) -> None:
    """``prune --stream``: the folder pruned block by block into OUT, a Hugging Face folder."""
    from ..hf.streaming import prune_streamed

    if not model.startswith("hf:"):
        raise ConfigError(f"--stream reads a Hugging Face model folder block by block: give "
                          f"--model hf:PATH, not {model!r}")
    if checkpoint is not None:
        raise ConfigError("--checkpoint: --stream reads the weights from the hf:PATH folder "
                          "itself; leave --checkpoint out")
    earlier = out.is_dir() and (out / "config.json").is_file() and (out / "plan.json").is_file()
    check_out(out, {p.name for p in out.iterdir()} if earlier else set())
    calibration = None
    if data is not None:
        train, _ = load_data(data)
        calibration = list(itertools.islice(train, calibration_batches))
    result = prune_streamed(model[3:], out, pruning, calibration, progress=True)
    console.print(escape(str(result)))
    if result.plan.layers:
        console.print(f"removed layers: {escape(', '.join(result.plan.layers))}")
    if result.blocks:  # (hidden size is streamed tensor by tensor, not block by block)
        slowest = max(result.blocks, key=lambda b: b.seconds)
        console.print(f"per block: {sum(b.seconds for b in result.blocks) / len(result.blocks):.2f} "
                      f"s on average, slowest {escape(slowest.name)} {slowest.seconds:.2f} s")


def _copy_for_timing(network):
    """The unpruned model, kept to time against the pruned one; a model that cannot be
    copied is not timed (the command says so) rather than not pruned."""
    try:
        return copy.deepcopy(network)
    except Exception as error:  # noqa: BLE001 - any reason a copy fails
        console.print(f"[yellow]note:[/] latency not timed: the model cannot be copied to "
                      f"time it against ({type(error).__name__}: {escape(str(error))[:120]})")
        return None


def _print_sizes(model: str, pruning: PruningMethod, before, after, speed) -> None:
    """Params, FLOPs and latency before and after; the latency change only where the
    interleaved rounds can tell the two apart."""
    table = Table(title=f"{model}: {escape(pruning.summary())}")
    columns = ("", "params", "FLOPs") + (("latency ms, median (quartiles)",) if speed else ())
    for column in columns:
        table.add_column(column, justify="right")
    timings = (speed.before, speed.after) if speed else (None, None)
    for label, m, timing in (("before", before, timings[0]), ("after", after, timings[1])):
        table.add_row(label, f"{m.params:,}", f"{m.flops:,}",
                      *((f"{timing.median_ms:.2f} ({timing.low_ms:.2f}–{timing.high_ms:.2f})",)
                        if timing else ()))
    change = "within the noise" if speed and speed.within_noise else (
        f"{speed.change:+.1%}" if speed else None)
    table.add_row("change", f"{after.params / before.params - 1:+.1%}",
                  f"{after.flops / before.flops - 1:+.1%}", *((change,) if speed else ()))
    console.print(table)
    if speed is not None:
        console.print(f"latency: {escape(speed.describe())}; {escape(speed.conditions())}")


def _reads_data(pruning: PruningMethod) -> bool:
    """Whether the method's criterion ranks by activations, losses or outputs on data."""
    criterion = getattr(pruning, "criterion", None)
    target = getattr(pruning, "target", "layers" if isinstance(pruning, LayerPruning)
                     else "channels")
    try:
        return bool(criterion) and get_criterion(criterion, target, "").needs_data
    except ConfigError:
        return False


def _measure_unpruned(network, x):
    """The model's size as it is; inputs it cannot run are a bad option."""
    try:
        return measure(network, x, latency=False)
    except Exception as error:
        raise ConfigError(f"the model does not run on the example inputs (--input-shape or "
                          f"--data): {type(error).__name__}: {error}") from error


def _round_to(text: str) -> int | str:
    """``--round-to``: a number of channels, or ``measured``."""
    try:
        return int(text)
    except ValueError:
        if text == "measured":
            return text
        raise ConfigError(f"--round-to {text!r}: give a number of channels (8) or "
                          f"'measured' (widths timed on this machine)") from None


def _method(name: str, criterion: str | None, **options) -> PruningMethod:
    """The pruning method the options describe (its own checks name the bad option)."""
    methods = cli_methods()
    if name not in methods:
        raise ConfigError(f"--method {name!r}: choose one of {sorted(methods)}"
                          f"{did_you_mean(name, list(methods))}")
    criterion = criterion or DEFAULT_CRITERIA.get(name, "l1")
    return methods[name].from_options(criterion=criterion, **options)


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
    from ..deploy import FORMATS
    from ..deploy import export as export_model
    from ..io import load as load_pruned

    try:
        if out.suffix not in FORMATS:
            raise ConfigError(f"--out {str(out)!r}: name it NAME.onnx (ONNX) or NAME.pt2 "
                              f"(torch.export)")
        if int8 and out.suffix != ".onnx":
            raise ConfigError(f"--int8 is ONNX Runtime's quantizer: give an --out NAME.onnx "
                              f"(got {out.name})")
        if not out.parent.is_dir():
            raise ConfigError(f"--out {str(out)!r}: the folder {str(out.parent)!r} does not "
                              f"exist")
        if not tolerance >= 0:
            raise ConfigError(f"--tolerance {tolerance}: give a fraction >= 0 of each "
                              f"output's scale (default 1e-4)")
        network = load_model(model, checkpoint, trust_pickle).eval()
        if pruned is not None:
            if not (pruned / "plan.json").is_file():
                raise ConfigError(f"--pruned {str(pruned)!r}: no plan.json there; give the "
                                  f"folder `prunekit prune --out` wrote")
            load_pruned(pruned, network)
        x = example_inputs(network, input_shape)
        _measure_unpruned(network, x)  # inputs the model cannot run name --input-shape
        fused = None
        if fuse:
            from ..surgery.fusion import fuse as fuse_model

            with _progress("folding BatchNorm layers and checking the fused model"):
                fused = fuse_model(network, x, tolerance=tolerance)
        with _progress(f"exporting to {out.name} and checking it"):
            report = export_model(network, x, out, quantize="int8" if int8 else None,
                                  tolerance=tolerance, dynamic_batch=dynamic_batch)
    except (PruneError, ConfigError) as error:
        _fail(error)
    if fused is not None:
        console.print(f"[green]fused:[/] {escape(str(fused))}")
    console.print(f"[green]checked:[/] {escape(str(report))}")


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
        pruning = _method(method, None, ratio=ratio)
        network = load_model(model, checkpoint, trust_pickle).eval()
        x = example_inputs(network, input_shape)
        with _progress(f"tracing {model}"):
            preview = pruning.preview(network, x)
    except (PruneError, ConfigError) as error:
        _fail(error)
    rows = preview.rows
    table = Table(title=f"{model}: {len(rows)} candidates for {escape(pruning.summary())}")
    for column in ("candidate", "size", "would remove"):
        table.add_column(column, justify="right")
    table.add_column("members")
    for row in rows[:limit]:
        table.add_row(escape(row.label), str(row.size), str(row.removed), escape(row.detail))
    console.print(table)
    if len(rows) > limit:
        console.print(f"… and {len(rows) - limit} more")
    for op in preview.unknown_ops:
        console.print(f"[yellow]no coupling rule[/] for {escape(op.op)} in {escape(op.module)}: "
                      f"its dims are left unpruned")


@app.command()
def iterative(
    model: str = typer.Option(..., help=MODEL_HELP),
    checkpoint: Path = typer.Option(None, help=CHECKPOINT_HELP),
    trust_pickle: bool = typer.Option(False, help=TRUST_PICKLE_HELP),
    data: str = typer.Option(..., help="DATA_SOURCE:FACTORY returning (train, test) batches of "
                                       "(inputs, labels), e.g. prunekit.cli.data:digits_loaders"),
    method: str = typer.Option("filter", help=METHOD_HELP),
    criterion: str = typer.Option(None, help="as for prune; default l1"),
    n: int = typer.Option(1, help="--method layers: how many layers in all"),
    steps: int = typer.Option(4, help="prune / fine-tune rounds"),
    ratio: float = typer.Option(0.5, help="final fraction of each group's channels removed"),
    flops_target: float = typer.Option(None, help="final fraction of FLOPs removed, "
                                                  "instead of --ratio"),
    finetune_epochs: int = typer.Option(1, help="fine-tuning epochs after each step"),
    lr: float = typer.Option(1e-3, help="learning rate for fine-tuning and distillation"),
    distill_steps: int = typer.Option(0, help="after each step, distil this many steps from "
                                      "the unpruned model on the training images (before "
                                      "fine-tuning; --finetune-epochs 0 for distillation alone)"),
    calibration_batches: int = typer.Option(8, min=1, help="training batches data-driven "
                                                                 "criteria read"),
    out: Path = typer.Option(..., help="directory for the model, plan, history.json and plot"),
    latency: bool = typer.Option(True, help="time every step's model against the unpruned "
                                            "one, interleaved, on a test batch"),
    threads: int = typer.Option(None, help="threads latency is timed with"),
) -> None:
    """Prune to a target in several steps, fine-tuning (cross-entropy) or distilling between
    them; record params, FLOPs, test accuracy and measured speed-up after every step."""
    from ..recover import Distillation
    from ..workflows.iterative import iterative_prune

    try:
        if distill_steps < 0:
            raise ConfigError(f"--distill-steps must be 0 (no distillation) or more, got "
                              f"{distill_steps}")
        distill = Distillation(steps=distill_steps, lr=lr) if distill_steps else None
        check_out(out, {"model.safetensors", "plan.json", "history.json", "history.png"})
        pruning = _method(method, criterion, ratio=ratio, n=n, flops_target=flops_target)
        network = load_model(model, checkpoint, trust_pickle)
        train, test = load_data(data)
        x = first_inputs(test)
        with _progress(f"pruning {model} in {steps} steps") as (bar, task):
            history = iterative_prune(
                network, x, pruning, steps, train_data=train, eval_data=test,
                finetune_epochs=finetune_epochs, lr=lr, distill=distill, distill_data=train,
                data=list(itertools.islice(train, calibration_batches)),
                timing_inputs=x if latency else None, threads=threads,
                progress=lambda message: bar.update(task, description=message))

        def write(folder: Path) -> None:
            write_checkpoint(network, folder, history.plan)
            (folder / "history.json").write_text(json.dumps(history.to_dict(), indent=1))
            history.plot(folder / "history.png")

        replace_out(out, write)
    except (PruneError, ConfigError) as error:
        _fail(error)
    recovery = f"{finetune_epochs} fine-tuning epochs" + (
        f" after {distill_steps} distillation steps" if distill_steps else "")
    table = Table(title=f"{model}: {escape(pruning.summary())} in {steps} steps, "
                        f"{recovery} each")
    for column in ("step", "params", "params removed", "FLOPs removed", "test accuracy",
                   "speed-up (95% CI)"):
        table.add_column(column, justify="right")
    for r in history.records:
        speed = speedup_cell(r.speedup, r.speedup_low, r.speedup_high)
        table.add_row(str(r.step), f"{r.params:,}", f"{r.sparsity:.1%}", f"{r.flop_reduction:.1%}",
                      f"{r.accuracy:.1%}", speed)
    console.print(table, "speed-up: against the unpruned model, timed interleaved on a test "
                         "batch" if latency else "")
    console.print(f"saved to {out}/ (model.safetensors, plan.json, history.json, history.png)")


@app.command()
def sensitivity(
    model: str = typer.Option(..., help=MODEL_HELP),
    checkpoint: Path = typer.Option(None, help=CHECKPOINT_HELP),
    trust_pickle: bool = typer.Option(False, help=TRUST_PICKLE_HELP),
    data: str = typer.Option(..., help="DATA_SOURCE:FACTORY returning (train, test) batches of "
                                       "(inputs, labels), e.g. prunekit.cli.data:digits_loaders"),
    ratios: str = typer.Option("0.25,0.5,0.75", help="comma-separated ratios to try per group"),
    method: str = typer.Option("filter", help=METHOD_HELP + ": whose candidates are tried "
                                              "and how they are ranked"),
    criterion: str = typer.Option(None, help="as for prune; default l1"),
    calibration_batches: int = typer.Option(8, min=1, help="training batches data-driven "
                                                                 "criteria read"),
    out: Path = typer.Option(..., help="directory for sensitivity.md, .json and .png"),
) -> None:
    """Prune each group of coupled channels alone at several ratios and record test accuracy
    (Li et al. 2017): the groups whose accuracy collapses are the ones to spare."""
    from ..workflows.sensitivity import sensitivity as run_sensitivity

    try:
        tried = parse_ratios(ratios)
        check_out(out, {"sensitivity.md", "sensitivity.json", "sensitivity.png"})
        pruning = _method(method, criterion, ratio=0.5)
        network = load_model(model, checkpoint, trust_pickle).eval()
        train, test = load_data(data)
        with _progress(f"sensitivity of {model}") as (bar, task):
            table = run_sensitivity(
                network, first_inputs(test), test, ratios=tried, method=pruning,
                data=list(itertools.islice(train, calibration_batches)),
                progress=lambda message: bar.update(task, description=message))

        def write(folder: Path) -> None:  # all three files, or none of them
            (folder / "sensitivity.md").write_text(table.to_markdown())
            (folder / "sensitivity.json").write_text(json.dumps(table.to_dict(), indent=1))
            table.plot(folder / "sensitivity.png")

        replace_out(out, write)
    except (PruneError, ConfigError) as error:
        _fail(error)
    shown = Table(title=f"{model}: accuracy with one group pruned "
                        f"(unpruned {table.baseline:.1%})")
    shown.add_column("group")
    shown.add_column("channels", justify="right")
    for ratio in sorted({r.ratio for r in table.rows}):
        shown.add_column(f"ratio {ratio:g}", justify="right")
    for group, rows in table.by_group().items():
        shown.add_row(escape(group), str(rows[0].channels), *(f"{r.accuracy:.1%}" for r in rows))
    console.print(shown)
    console.print(f"written to {out}/ (sensitivity.md, sensitivity.json, sensitivity.png)")


@app.command()
def demo(
    out: Path = typer.Option(Path("demo_output"), help="where report.md, results.json and plots go"),
    epochs: int = typer.Option(20, help="training epochs for the unpruned model"),
    finetune_epochs: int = typer.Option(5, help="fine-tuning epochs for every method"),
    flops_target: float = typer.Option(0.5, help="fraction of FLOPs every method removes"),
) -> None:
    """Train a ResNet on digits; compare every method at one FLOPs budget; prune iteratively;
    run a sensitivity analysis; write a report with plots."""
    from .demo import run_demo

    with _progress() as (bar, task):
        comparison = run_demo(out, epochs=epochs, finetune_epochs=finetune_epochs,
                              flops_target=flops_target,
                              progress=lambda message: bar.update(task, description=message))
    _print_comparison(comparison)
    console.print(f"report written to {out / 'report.md'}")


@app.command()
def compare(
    flops_target: float = typer.Option(0.5, help="fraction of FLOPs every method removes"),
    finetune_epochs: int = typer.Option(5, help="fine-tuning epochs for every method"),
    epochs: int = typer.Option(20, help="training epochs for the unpruned model"),
    out: Path = typer.Option(Path("compare_output"), help="where results.json and the plot go"),
    seed: int = typer.Option(0, help="seed for training, data split and fine-tuning"),
) -> None:
    """Compare filter, channel and layer pruning on the digits ResNet at one FLOPs budget."""
    from ..workflows.compare import compare as run_compare
    from .demo import trained_digits_resnet

    try:
        with _progress() as (bar, task):
            bar.update(task, description=f"training the digits ResNet for {epochs} epochs")
            model, digits = trained_digits_resnet(epochs, seed)
            comparison = run_compare(
                model, digits.example_inputs, digits.train, digits.test, flops_target=flops_target,
                finetune_epochs=finetune_epochs, data=digits.calibration, seed=seed,
                timing_inputs=next(iter(digits.test))[0],
                progress=lambda message: bar.update(task, description=message))
    except PruneError as error:
        _fail(error)
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(comparison.to_dict(), indent=1))
    comparison.plot(out / "comparison.png")
    _print_comparison(comparison)
    console.print(f"results written to {out}")


def _print_comparison(comparison) -> None:
    from ..workflows.compare import speedup_text, verdict

    base = comparison.baseline
    table = Table(title=f"digits ResNet: {comparison.flops_target:.0%} of FLOPs removed, "
                        f"{comparison.finetune_epochs} fine-tuning epochs",
                  caption=f"latency: median (quartiles), {comparison.timing}; speed-up against "
                          f"the unpruned model in the same rounds (95% CI)")
    for column in ("method", "params", "FLOPs removed", "latency ms", "speed-up",
                   "acc one-shot", "acc fine-tuned", "verified"):
        table.add_column(column, justify="right")
    for r in comparison.rows:
        table.add_row(escape(r.method), f"{r.params:,}", f"{1 - r.flops / base.flops:.1%}",
                      str(r.latency).replace(" ms", ""), speedup_text(r.speedup),
                      f"{r.accuracy_one_shot:.1%}",
                      "—" if r.accuracy_fine_tuned is None else f"{r.accuracy_fine_tuned:.1%}",
                      verdict(r.verified))
    console.print(table)


@contextmanager
def _progress(description: str = "starting"):
    """A transient spinner with elapsed time; yields (bar, task) to update its text."""
    with Progress(SpinnerColumn(), TextColumn("{task.description}"), TimeElapsedColumn(),
                  console=console, transient=True) as bar:
        yield bar, bar.add_task(description, total=None)


def main(argv: list[str] | None = None) -> None:
    """The ``prunekit`` command: ``app`` with every mistake in the options one ``error:``
    line (exit code 2) instead of click's framed usage box."""
    # typer's own copy of click: BadParameter's first base is its UsageError, whose base is
    # the ClickException every usage mistake raises
    click_exception = typer.BadParameter.__mro__[2]
    try:
        # outside standalone mode click returns the code typer.Exit carried, not raises it
        code = app(args=argv, standalone_mode=False)
    except typer.Abort:
        typer.echo("error: interrupted", err=True)
        raise SystemExit(130) from None
    except click_exception as error:
        text = " ".join(line.strip() for line in error.format_message().splitlines()
                        if line.strip())
        if not text:  # no arguments at all: the help was the answer
            raise SystemExit(error.exit_code) from None
        typer.echo(f"error: {text}" + (f" (see prunekit {error.ctx.info_name} --help)"
                                       if getattr(error, "ctx", None) is not None
                                       and error.ctx.parent is not None else ""), err=True)
        raise SystemExit(error.exit_code) from None
    except typer.Exit as done:  # the code a command chose
        raise SystemExit(done.exit_code) from None
    if isinstance(code, int) and code:
        raise SystemExit(code)


if __name__ == "__main__":
    main()
