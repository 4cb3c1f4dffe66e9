"""The ``prunekit`` command: prune, analyze, compare and demo."""

from __future__ import annotations

import copy
import importlib
import importlib.util
from contextlib import contextmanager
from pathlib import Path

import torch
import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
from rich.table import Table
from torch import nn

from .api import prune as prune_model
from .errors import ConfigError, PruneError
from .graph.dependency import DependencyGraph
from .io import save
from .measure import measure
from .methods import ChannelPruning, FilterPruning, HeadPruning, LayerPruning
from .planner import group_ratio
from .verify import verify

app = typer.Typer(help="Structured pruning for PyTorch models.", no_args_is_help=True,
                  pretty_exceptions_enable=False)
console = Console()

METHOD_NAMES = {"filter": FilterPruning, "channel": ChannelPruning, "heads": HeadPruning,
                "layers": LayerPruning}
DEFAULT_CRITERIA = {"layers": "influence"}


def load_model(spec: str) -> nn.Module:
    """``torchvision:NAME``, ``hf:PATH`` (a Hugging Face model directory) or
    ``path/to/file.py:factory`` (or ``package.module:factory``)."""
    if spec.startswith("hf:"):
        return _load_hf(spec[3:])
    source, _, name = spec.rpartition(":")
    if not source or not name:
        raise typer.BadParameter(f"{spec!r}: expected SOURCE:NAME, e.g. torchvision:resnet18")
    if source == "torchvision":
        import torchvision

        return torchvision.models.get_model(name, weights=None)
    if source.endswith(".py"):
        path = Path(source)
        if not path.is_file():
            raise typer.BadParameter(f"{source!r} does not exist")
        module_spec = importlib.util.spec_from_file_location(path.stem, path)
        module = importlib.util.module_from_spec(module_spec)
        module_spec.loader.exec_module(module)
    else:
        module = importlib.import_module(source)
    factory = getattr(module, name, None)
    if factory is None:
        raise typer.BadParameter(f"{source!r} has no {name!r}")
    return factory()


def _load_hf(path: str) -> nn.Module:
    if not (Path(path) / "config.json").is_file():
        raise typer.BadParameter(f"hf:{path}: not a Hugging Face model directory (no config.json)")
    import transformers

    transformers.logging.set_verbosity_error()
    return transformers.AutoModel.from_pretrained(path)


def example_inputs(network: nn.Module, input_shape: str | None):
    """Random inputs for the model: ``input_ids`` (batch, tokens) for a Hugging Face text
    model, ``pixel_values`` for a vision one, else a tensor of ``input_shape``."""
    config = getattr(network, "config", None)
    main_input = getattr(network, "main_input_name", None)
    generator = torch.Generator().manual_seed(0)
    if config is not None and main_input == "input_ids":
        shape = parse_shape(input_shape or "2,16")
        if len(shape) != 2:
            raise typer.BadParameter(f"--input-shape {input_shape!r}: a text model takes "
                                     f"BATCH,TOKENS")
        return {"input_ids": torch.randint(0, config.vocab_size, shape, generator=generator)}
    if config is not None and main_input == "pixel_values":
        size = getattr(config, "image_size", 224)
        default = f"1,{getattr(config, 'num_channels', 3)},{size},{size}"
        return {"pixel_values": torch.randn(parse_shape(input_shape or default),
                                            generator=generator)}
    return torch.randn(parse_shape(input_shape or "1,3,224,224"), generator=generator)


def parse_shape(text: str) -> tuple[int, ...]:
    try:
        shape = tuple(int(part) for part in text.split(","))
    except ValueError:
        raise typer.BadParameter(f"{text!r}: expected comma-separated integers, e.g. 1,3,224,224")
    if not shape or min(shape) < 1:
        raise typer.BadParameter(f"{text!r}: every size must be positive")
    return shape


def _fail(error: Exception) -> None:
    console.print(f"[bold red]error:[/] {escape(str(error))}")
    raise typer.Exit(code=1)


@app.command()
def prune(
    model: str = typer.Option(..., help="torchvision:NAME, hf:PATH or path/to/file.py:factory"),
    input_shape: str = typer.Option(None, help="example input shape (default 1,3,224,224; "
                                               "BATCH,TOKENS = 2,16 for text models)"),
    method: str = typer.Option("filter", help="filter | channel | heads | layers"),
    ratio: float = typer.Option(0.5, help="fraction of each group's channels (or heads) to remove"),
    n: int = typer.Option(1, help="--method layers: how many layers or blocks to remove"),
    criterion: str = typer.Option(None, help="l1 | l2 | fpgm | random | gradient | entropy "
                                             "(heads); influence | angular | output | last "
                                             "(layers); default l1, influence for layers"),
    round_to: int = typer.Option(1, help="keep a multiple of this many channels"),
    flops_target: float = typer.Option(None, help="remove this fraction of FLOPs instead of --ratio"),
    global_ranking: bool = typer.Option(False, help="rank channels across the whole model"),
    out: Path = typer.Option(..., help="directory for model.safetensors and plan.json"),
    check: bool = typer.Option(True, help="verify masked and pruned models agree"),
) -> None:
    """Prune a model and save the result (weights + plan; a Hugging Face model whose config
    describes the pruned sizes is also saved with save_pretrained, in OUT/hf)."""
    if method not in METHOD_NAMES:
        raise typer.BadParameter(f"--method {method!r}: choose one of {sorted(METHOD_NAMES)}")
    criterion = criterion or DEFAULT_CRITERIA.get(method, "l1")
    try:
        if method == "layers":
            pruning = LayerPruning(n=n, criterion=criterion, flops_target=flops_target)
        else:
            pruning = METHOD_NAMES[method](ratio=ratio, criterion=criterion, round_to=round_to,
                                           flops_target=flops_target,
                                           global_ranking=global_ranking)
        network = load_model(model).eval()
        x = example_inputs(network, input_shape)
        original = copy.deepcopy(network) if check else None
        with _progress(f"pruning {model}"):
            # data-driven criteria read the example inputs: a smoke test, not a calibration
            result = prune_model(network, x, pruning, data=[x])
            report = verify(original, x, result.plan) if check else None
            before, after = measure(original or network, x), measure(network, x)
        save(network, out, result.plan)
        if result.config_matches:
            network.save_pretrained(out / "hf")
    except (PruneError, ConfigError) as error:
        _fail(error)
    table = Table(title=f"{model}: {escape(_describe(pruning))}")
    for column in ("", "params", "FLOPs", "latency (ms)"):
        table.add_column(column, justify="right")
    for label, m in (("before", before), ("after", after)):
        table.add_row(label, f"{m.params:,}", f"{m.flops:,}", f"{m.latency_ms:.2f}")
    table.add_row("change", f"{after.params / before.params - 1:+.1%}",
                  f"{after.flops / before.flops - 1:+.1%}",
                  f"{after.latency_ms / before.latency_ms - 1:+.1%}")
    console.print(table)
    if result.plan.layers:
        console.print(f"removed layers: {escape(', '.join(result.plan.layers))}")
    if report is not None:
        console.print(f"verify: {escape(str(report))}")
    console.print(f"saved to {out}/ (model.safetensors, plan.json)")
    if result.config_matches:
        console.print(f"also saved with save_pretrained to {out / 'hf'}/ "
                      f"(AutoModel.from_pretrained reloads it)")
    elif result.config_matches is False:
        console.print("the pruned sizes differ from what one config can describe: reload it "
                      "with pk.load")


def _describe(pruning) -> str:
    if isinstance(pruning, LayerPruning):
        return f"LayerPruning(n={pruning.n}, criterion={pruning.criterion!r})"
    return f"{type(pruning).__name__}(ratio={pruning.ratio}, criterion={pruning.criterion!r})"


@app.command()
def analyze(
    model: str = typer.Option(..., help="torchvision:NAME, hf:PATH or path/to/file.py:factory"),
    input_shape: str = typer.Option(None, help="example input shape (as for prune)"),
    ratio: float = typer.Option(0.5, help="ratio used for the 'would remove' column"),
    limit: int = typer.Option(40, help="show at most this many groups"),
) -> None:
    """Print the groups of coupled channels and what each would remove."""
    try:
        network = load_model(model).eval()
        pruning = FilterPruning(ratio=ratio)
        with _progress(f"tracing {model}"):
            graph = DependencyGraph(network, example_inputs(network, input_shape))
    except PruneError as error:
        _fail(error)
    table = Table(title=f"{model}: {len(graph.groups)} prunable groups")
    table.add_column("group", justify="right")
    table.add_column("channels", justify="right")
    table.add_column("would remove", justify="right")
    table.add_column("members")
    for group in graph.groups[:limit]:
        removed = group.size - pruning.channels_to_keep(group.size, group_ratio(group, pruning))
        members = " => ".join(str(m) for m in group.members[:6])
        more = len(group.members) - 6
        table.add_row(str(group.id), str(group.size), str(removed),
                      escape(members + (f" (+{more} more)" if more > 0 else "")))
    console.print(table)
    if len(graph.groups) > limit:
        console.print(f"… and {len(graph.groups) - limit} more groups")
    for unknown in graph.unknown_ops:
        console.print(f"[yellow]no coupling rule[/] for {escape(unknown.op)} in {escape(unknown.module)}: "
                      f"its dims are left unpruned")


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
    import json

    from .compare import compare as run_compare
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
    from .compare import verdict

    base = comparison.baseline
    table = Table(title=f"digits ResNet: {comparison.flops_target:.0%} of FLOPs removed, "
                        f"{comparison.finetune_epochs} fine-tuning epochs")
    for column in ("method", "params", "FLOPs removed", "latency ms", "acc one-shot",
                   "acc fine-tuned", "verified"):
        table.add_column(column, justify="right")
    for r in comparison.rows:
        table.add_row(escape(r.method), f"{r.params:,}", f"{1 - r.flops / base.flops:.1%}",
                      f"{r.latency_ms:.2f}", f"{r.accuracy_one_shot:.1%}",
                      "—" if r.accuracy_fine_tuned is None else f"{r.accuracy_fine_tuned:.1%}",
                      verdict(r.verified))
    console.print(table)


@contextmanager
def _progress(description: str = "starting"):
    """A transient spinner with elapsed time; yields (bar, task) to update its text."""
    with Progress(SpinnerColumn(), TextColumn("{task.description}"), TimeElapsedColumn(),
                  console=console, transient=True) as bar:
        yield bar, bar.add_task(description, total=None)


if __name__ == "__main__":
    app()
