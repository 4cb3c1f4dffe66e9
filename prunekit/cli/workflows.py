"""``prunekit iterative``, ``sensitivity``, ``demo`` and ``compare``: the workflows, each
built from its options, run by the library, and shown by its result's own ``table()``."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import typer

from ..core.progress import Step
from ..errors import ConfigError, PruneError
from ..export.saving import write_checkpoint
from .app import (
    CALIBRATION_HELP,
    CHECKPOINT_HELP,
    METHOD_HELP,
    MODEL_HELP,
    TRUST_PICKLE_HELP,
    app,
    console,
    fail,
    method_from_options,
    progress,
    show,
)
from .output import check_out, replace_out
from .sources import first_inputs, load_data, load_model, parse_ratios

DATA_HELP = ("DATA_SOURCE:FACTORY returning (train, test) batches of (inputs, labels), e.g. "
             "prunekit.cli.data:digits_loaders")


@app.command()
def iterative(
    model: str = typer.Option(..., help=MODEL_HELP),
    checkpoint: Path = typer.Option(None, help=CHECKPOINT_HELP),
    trust_pickle: bool = typer.Option(False, help=TRUST_PICKLE_HELP),
    data: str = typer.Option(..., help=DATA_HELP),
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
    calibration_batches: int = typer.Option(8, min=1, help=CALIBRATION_HELP),
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
        pruning = method_from_options(method, criterion, optional={"ratio": ratio, "n": n},
                                      flops_target=flops_target)
        network = load_model(model, checkpoint, trust_pickle)
        train, test = load_data(data)
        x = first_inputs(test)
        with progress() as report:
            history = iterative_prune(
                network, x, pruning, steps, train_data=train, eval_data=test,
                finetune_epochs=finetune_epochs, lr=lr, distill=distill, distill_data=train,
                data=list(itertools.islice(train, calibration_batches)),
                timing_inputs=x if latency else None, threads=threads,
                progress=report)

        def write(folder: Path) -> None:
            write_checkpoint(network, folder, history.plan)
            (folder / "history.json").write_text(json.dumps(history.to_dict(), indent=1))
            history.plot(folder / "history.png")

        replace_out(out, write)
    except (PruneError, ConfigError) as error:
        fail(error)
    recovery = f"{finetune_epochs} fine-tuning epochs" + (
        f" after {distill_steps} distillation steps" if distill_steps else "")
    show(history.table(), title=f"{model}: {pruning.summary()} in {steps} steps, {recovery} each")
    console.print(f"saved to {out}/ (model.safetensors, plan.json, history.json, history.png)")


@app.command()
def sensitivity(
    model: str = typer.Option(..., help=MODEL_HELP),
    checkpoint: Path = typer.Option(None, help=CHECKPOINT_HELP),
    trust_pickle: bool = typer.Option(False, help=TRUST_PICKLE_HELP),
    data: str = typer.Option(..., help=DATA_HELP),
    ratios: str = typer.Option("0.25,0.5,0.75", help="comma-separated ratios to try per group"),
    method: str = typer.Option("filter", help=METHOD_HELP + ": whose candidates are tried "
                                              "and how they are ranked"),
    criterion: str = typer.Option(None, help="as for prune; default l1"),
    calibration_batches: int = typer.Option(8, min=1, help=CALIBRATION_HELP),
    out: Path = typer.Option(..., help="directory for sensitivity.md, .json and .png"),
) -> None:
    """Prune each group of coupled channels alone at several ratios and record test accuracy
    (Li et al. 2017): the groups whose accuracy collapses are the ones to spare."""
    from ..workflows.sensitivity import sensitivity as run_sensitivity

    try:
        tried = parse_ratios(ratios)
        check_out(out, {"sensitivity.md", "sensitivity.json", "sensitivity.png"})
        pruning = method_from_options(method, criterion, optional={"ratio": 0.5})
        network = load_model(model, checkpoint, trust_pickle).eval()
        train, test = load_data(data)
        with progress() as report:
            table = run_sensitivity(
                network, first_inputs(test), test, ratios=tried, method=pruning,
                data=list(itertools.islice(train, calibration_batches)),
                progress=report)

        def write(folder: Path) -> None:  # all three files, or none of them
            (folder / "sensitivity.md").write_text(table.to_markdown())
            (folder / "sensitivity.json").write_text(json.dumps(table.to_dict(), indent=1))
            table.plot(folder / "sensitivity.png")

        replace_out(out, write)
    except (PruneError, ConfigError) as error:
        fail(error)
    show(table.table(), title=f"{model}: accuracy with one group pruned "
                              f"(unpruned {table.baseline:.1%})")
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

    with progress() as report:
        comparison = run_demo(out, epochs=epochs, finetune_epochs=finetune_epochs,
                              flops_target=flops_target,
                              progress=report)
    _show_comparison(comparison)
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
        with progress() as report:
            report(Step("training the digits ResNet", detail=f"{epochs} epochs"))
            model, digits = trained_digits_resnet(epochs, seed)
            comparison = run_compare(
                model, digits.example_inputs, digits.train, digits.test, flops_target=flops_target,
                finetune_epochs=finetune_epochs, data=digits.calibration, seed=seed,
                timing_inputs=next(iter(digits.test))[0],
                progress=report)
    except PruneError as error:
        fail(error)
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(comparison.to_dict(), indent=1))
    comparison.plot(out / "comparison.png")
    _show_comparison(comparison)
    console.print(f"results written to {out}")


def _show_comparison(comparison) -> None:
    show(comparison.table(), title=f"digits ResNet: FLOPs budget {comparison.flops_target:.0%}"
                                   f", {comparison.finetune_epochs} fine-tuning epochs")
