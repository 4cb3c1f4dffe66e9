"""``prunekit prune``: build the method from its options, call ``pk.prune`` (or
``pk.prune_streamed``), write OUT whole, and show what ``print(result)`` shows."""

from __future__ import annotations

import copy
import itertools
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
import typer
from rich.markup import escape

from ..api import PruneResult
from ..api import prune as prune_model
from ..core.progress import Step
from ..errors import ConfigError, PruneError
from ..export.saving import write_checkpoint
from ..importance import get_criterion
from ..measure.latency import Speedup, compare_latency
from ..methods import LayerPruning, PruningMethod
from ..methods.groups import check_module_names
from ..recover import DistillResult, distill
from .app import (
    CALIBRATION_HELP,
    CHECKPOINT_HELP,
    CRITERION_HELP,
    METHOD_HELP,
    MODEL_HELP,
    TRUST_PICKLE_HELP,
    app,
    console,
    fail,
    measure_unpruned,
    method_from_options,
    parse_round_to,
    progress,
    show,
)
from .output import check_out, copy_hf_extras, replace_out
from .sources import example_inputs, first_inputs, load_data, load_model
from .text import (
    RECOVERY_BATCH,
    SAMPLES_PREFIX,
    is_gguf,
    is_language_data,
    language_batches,
    recovery_batches,
    tokenizer_for,
)

OUT_FILES = {"model.safetensors", "plan.json", "hf", "tokenizer"}


@dataclass
class Pruned:
    """What a prune produced, for writing and showing."""

    result: PruneResult
    speed: Speedup | None
    distilled: DistillResult | None = None
    heads: PruneResult | None = None  # --heads-first's step, already inside ``result``


@app.command()
def prune(
    model: str = typer.Option(..., help=MODEL_HELP),
    checkpoint: Path = typer.Option(None, help=CHECKPOINT_HELP),
    trust_pickle: bool = typer.Option(False, help=TRUST_PICKLE_HELP),
    input_shape: str = typer.Option(None, help="example input shape (default 1,3,224,224; "
                                               "BATCH,TOKENS = 2,16 for text models)"),
    method: str = typer.Option("filter", help=METHOD_HELP),
    ratio: float = typer.Option(None, help="fraction of each group's channels (or heads) to "
                                           "remove (default 0.5; not with a target)"),
    n: int = typer.Option(1, help="--method layers: how many layers or blocks to remove"),
    criterion: str = typer.Option(None, help=CRITERION_HELP),
    round_to: str = typer.Option("1", help="keep a multiple of this many channels, or "
                                           "'measured': widths timed on this machine"),
    flops_target: float = typer.Option(None, help="remove this fraction of FLOPs instead of --ratio"),
    params_target: float = typer.Option(None, help="filter/channel/heads/hidden/width: remove "
                                                   "this fraction of the parameters instead of "
                                                   "--ratio"),
    latency_target: float = typer.Option(None, help="filter/channel: run in this fraction of "
                                                    "the unpruned time (0.5: twice as fast), "
                                                    "timed on this machine with these inputs "
                                                    "and --threads, instead of --ratio"),
    global_ranking: bool = typer.Option(False, help="rank channels across the whole model"),
    heads_first: float = typer.Option(None, help="filter/channel on a transformer: first "
                                                 "remove this fraction of every attention "
                                                 "layer's heads (by --criterion, with "
                                                 "--bias-compensation when given), then the "
                                                 "channels; --params-target and "
                                                 "--flops-target count both steps"),
    reconstruct: bool = typer.Option(False, help="channel/heads: re-fit the layers that lost "
                                                 "inputs by least squares on the calibration "
                                                 "batches (--data), no training"),
    bias_compensation: bool = typer.Option(False, help="filter/channel/heads/hidden/width: add "
                                                       "the mean of what each linear layer's "
                                                       "lost inputs gave it on the "
                                                       "calibration batches to its bias "
                                                       "(FLAP; pairs with --criterion "
                                                       "fluctuation)"),
    rotate: bool = typer.Option(False, help="hidden: rotate the residual stream onto its "
                                            "principal directions on the calibration "
                                            "batches first (checked exact), then cut the "
                                            "weakest (RMSNorm models; needs --data)"),
    data: str = typer.Option(None, help="DATA_SOURCE:FACTORY returning (train, test) batches "
                                        "(the model's inputs, or (inputs, labels) for criteria "
                                        "that read a loss), text:PATH[,PATH] (text files, or "
                                        "folders of them, read with an hf: model's tokenizer "
                                        "in sequences of 256 tokens), samples:N (N sequences "
                                        "of 256 tokens an hf: model writes itself) or "
                                        "text:PATH+samples:N; data-driven criteria and "
                                        "--reconstruct read up to --calibration-batches "
                                        "training batches (default: the example inputs)"),
    recover_minutes: float = typer.Option(None, help="after pruning, distil the pruned model "
                                                     "from the unpruned one on the --data "
                                                     "batches for this many minutes"),
    lora_rank: int = typer.Option(None, help="with --recover-minutes: train low-rank adapters "
                                             "of this rank (peft), merged back, instead of "
                                             "every weight"),
    recover_batch: int = typer.Option(None, help="with --recover-minutes on text:/samples: "
                                                 "data: sequences per distillation step "
                                                 "(default 2: in a fixed time, twice the "
                                                 "steps of 4; more where memory allows, "
                                                 "e.g. on a GPU)"),
    calibration_batches: int = typer.Option(8, min=1, help=CALIBRATION_HELP),
    keep: list[str] = typer.Option(None, help="leave this module and everything in it as it "
                                              "is (a name from model.named_modules(), e.g. "
                                              "model.layers.0); layers: never removed. "
                                              "Repeat for more"),
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
        _check_targets(ratio, flops_target, latency_target, input_shape, data, params_target)
        recovery = _recovery(recover_minutes, lora_rank, data, stream, recover_batch)
        pruning = method_from_options(
            method, criterion, optional={"ratio": 0.5 if ratio is None else ratio, "n": n},
            round_to=None if round_to == "1" else parse_round_to(round_to),
            flops_target=flops_target, params_target=params_target,
            latency_target=latency_target, global_ranking=global_ranking or None,
            reconstruct=reconstruct or None, rotate=rotate or None,
            bias_compensation=bias_compensation or None)
        heads = _heads_first(heads_first, pruning, criterion, bias_compensation, stream,
                             latency_target)
        if data is None and _reads_loss(pruning):
            raise ConfigError(f"--criterion {pruning.criterion}: it ranks by a loss on labelled "
                              f"batches; pass --data with (inputs, labels) batches")
        if stream and keep:
            raise ConfigError("--keep: a streamed prune treats every block alike; prune in "
                              "memory to keep some whole")
        if stream:
            _prune_streamed(model, checkpoint, pruning, data, calibration_batches, out)
            return
        check_out(out, OUT_FILES)
        if threads is not None:
            if threads < 1:
                raise ConfigError(f"--threads {threads}: give a positive number")
            torch.set_num_threads(threads)  # for the search's timings as for the report's
        network = load_model(model, checkpoint, trust_pickle).eval()
        kept = _modules(network, keep or [])
        # recovery trains on every batch; pruning reads --calibration-batches of them
        x, batches = _inputs(network, model, input_shape, data,
                             None if recovery else calibration_batches)
        pruned = _prune(model, network, x, pruning, calibration=batches[:calibration_batches],
                        check=check, latency=latency, threads=threads, recovery=recovery,
                        batches=(recovery_batches(batches, recovery.batch)
                                 if recovery and recovery.batch else batches),
                        keep=kept, heads=heads)
        replace_out(out, lambda folder: _write(folder, network, pruned.result, model, out))
    except (PruneError, ConfigError) as error:
        fail(error)
    _report(model, pruning, pruned, data is None, out, heads)


def _heads_first(ratio: float | None, pruning: PruningMethod, criterion: str | None,
                 bias_compensation: bool, stream: bool,
                 latency_target: float | None) -> PruningMethod | None:
    """``--heads-first``: the heads' step, checked against the options it joins."""
    if ratio is None:
        return None
    if pruning.cli_name not in ("filter", "channel"):
        raise ConfigError(f"--heads-first: it comes before --method filter or channel, not "
                          f"{pruning.cli_name} (--method heads prunes heads alone)")
    if stream:
        raise ConfigError("--heads-first: a streamed prune runs one method over every "
                          "block; prune in memory for heads, then channels")
    if latency_target is not None:
        raise ConfigError("--heads-first and --latency-target: the latency search times one "
                          "method's widths; give --params-target or --flops-target")
    if not 0 < ratio < 1:
        raise ConfigError(f"--heads-first {ratio:g}: give the fraction of each layer's heads "
                          f"to remove, between 0 and 1")
    try:
        return method_from_options("heads", criterion, optional={"ratio": ratio},
                                   bias_compensation=bias_compensation or None)
    except ConfigError as error:
        raise ConfigError(f"--heads-first: {error}") from None


def _modules(network, names: list[str]) -> list:
    """The modules ``--keep`` names; one line with close matches for a name it lacks."""
    if "" in names:  # the model itself: nothing would be pruned
        raise ConfigError("--keep '': give the name of a module inside the model, such as "
                          "model.layers.0")
    check_module_names(network, names, "--keep")
    return [network.get_submodule(name) for name in names]


def _check_targets(ratio: float | None, flops_target: float | None,
                   latency_target: float | None, input_shape: str | None,
                   data: str | None, params_target: float | None = None) -> None:
    """Options that would silently override each other are refused."""
    targets = [name for name, value in (("--flops-target", flops_target),
                                        ("--params-target", params_target),
                                        ("--latency-target", latency_target))
               if value is not None]
    if ratio is not None and targets:
        raise ConfigError(f"--ratio and {targets[0]}: the target decides how much goes; give "
                          f"one of them")
    if len(targets) > 1:
        raise ConfigError(f"{' and '.join(targets)}: give one target")
    if input_shape is not None and data is not None:
        raise ConfigError("--input-shape and --data: the example inputs are the first --data "
                          "batch; leave --input-shape out")


def _inputs(network, model: str, input_shape: str | None, data: str | None,
            limit: int | None) -> tuple[Any, list]:
    """The example inputs and the data's first ``limit`` batches (all with None), or the
    random example inputs alone (enough to run a data-driven criterion, no more)."""
    if data is None:
        x = example_inputs(network, input_shape)
        return x, [x]
    if is_language_data(data):
        with progress() as report:
            batches = language_batches(data, model, network, report)[:limit]
        return batches[0], batches
    train, _ = load_data(data)
    return first_inputs(train, labels=False), list(itertools.islice(train, limit))


@dataclass
class Recovery:
    """``--recover-minutes``: distillation from the unpruned model after the prune."""

    minutes: float
    lora_rank: int | None
    batch: int | None  # sequences per step, for text; None: the data's own batches


def _recovery(minutes: float | None, lora_rank: int | None, data: str | None,
              stream: bool, batch: int | None = None) -> Recovery | None:
    if minutes is None:
        for option, value in (("--lora-rank", lora_rank), ("--recover-batch", batch)):
            if value is not None:
                raise ConfigError(f"{option}: it sets what --recover-minutes trains; give "
                                  f"--recover-minutes too")
        return None
    if not minutes > 0:
        raise ConfigError(f"--recover-minutes {minutes:g}: give a positive number of minutes")
    if data is None:
        raise ConfigError("--recover-minutes: recovery trains on --data; give --data (for a "
                          "language model, text:PATH)")
    if stream:
        raise ConfigError("--recover-minutes: a streamed prune never holds the whole model; "
                          "prune in memory to recover, or distil the output folder afterwards")
    if lora_rank is not None and lora_rank < 1:
        raise ConfigError(f"--lora-rank {lora_rank}: give a positive rank")
    if not is_language_data(data):
        if batch is not None:
            raise ConfigError(f"--recover-batch: it cuts text:/samples: data into steps; "
                              f"recovery trains on the batches {data!r} makes as they are")
        return Recovery(minutes, lora_rank, None)
    if batch is not None and batch < 1:
        raise ConfigError(f"--recover-batch {batch}: give a positive number of sequences")
    return Recovery(minutes, lora_rank, RECOVERY_BATCH if batch is None else batch)


def _prune(model: str, network, x, pruning: PruningMethod, *, calibration: list, check: bool,
           latency: bool, threads: int | None, recovery: Recovery | None = None,
           batches: list | None = None, keep: list | None = None,
           heads: PruningMethod | None = None) -> Pruned:
    with progress() as report:
        measure_unpruned(network, x)  # inputs the model cannot run name --input-shape
        original = _copy_for_timing(network) if latency or recovery else None
        first = None
        if heads is not None:
            first = prune_model(network, x, heads, data=calibration, check=check,
                                progress=report, ignore=keep or ())
            if first.plan.is_empty:  # a share under one head: floor(3 × 0.33) is none
                raise ConfigError(f"--heads-first {heads.ratio:g}: that share of each layer's "
                                  f"heads is less than one head here; give a larger share")
            pruning = _what_is_left(pruning, first)
        result = prune_model(network, x, pruning, data=calibration, check=check,
                             progress=report, ignore=keep or ())
        if first is not None:
            result = _both(first, result)
        distilled = None
        if recovery is not None and original is not None:
            distilled = distill(network, original, batches, steps=10**9, lr=1e-4,
                                schedule="constant", warmup=0, hidden=False,
                                time_limit=recovery.minutes * 60,
                                lora_rank=recovery.lora_rank, progress=report)
        speed = None
        if original is not None and latency:
            report(Step("timing the unpruned and pruned models", detail="interleaved"))
            speed = compare_latency(original, network, x, threads=threads)
            del original
    return Pruned(result, speed, distilled, first)


def _what_is_left(pruning: PruningMethod, heads: PruneResult) -> PruningMethod:
    """``pruning`` with its parameters or FLOPs target, a share of the unpruned model,
    turned into the share of the model the heads' step left that is still to go."""
    for target, measured in (("params_target", "params"), ("flops_target", "flops")):
        share = getattr(pruning, target, None)
        if share is None:
            continue
        before, now = getattr(heads.before, measured), getattr(heads.after, measured)
        left = (share * before - (before - now)) / now
        if left <= 0:
            option = "--" + target.replace("_", "-")
            raise ConfigError(f"{option} {share:g}: --heads-first already removed "
                              f"{1 - now / before:.1%} of the {measured}; give a larger "
                              f"target or a smaller --heads-first")
        return replace(pruning, **{target: left})
    return pruning


def _both(heads: PruneResult, channels: PruneResult) -> PruneResult:
    """One result for the two steps: one plan (``pk.load`` applies it), the sizes before the
    first and after the second, what either left unpruned, and whether the config describes
    the model (the second step's config update reads every layer's sizes, the heads' too);
    the check shown is the second's (``_report`` shows the first's too)."""
    return PruneResult(heads.plan.then(channels.plan), heads.before, channels.after,
                       heads.skipped + channels.skipped, channels.config_matches,
                       channels.report, heads.unknown_ops + channels.unknown_ops)


def _write(folder: Path, network, result: PruneResult, model: str, out: Path) -> None:
    write_checkpoint(network, folder, result.plan)
    if result.config_matches:
        network.save_pretrained(folder / "hf")
    target = folder / ("hf" if result.config_matches else "tokenizer")
    if model.startswith("hf:") and is_gguf(model):  # the file's own tokenizer
        tokenizer_for(model, "--model").save_pretrained(target)
    elif model.startswith("hf:"):  # with the model, or alone beside the pk.load files
        copy_hf_extras(Path(model[3:]), target, out)


def _report(model: str, pruning: PruningMethod, pruned: Pruned, random_inputs: bool,
            out: Path, heads: PruningMethod | None = None) -> None:
    result = pruned.result
    title = pruning.summary() if heads is None else f"{heads.summary()}, then {pruning.summary()}"
    show(result.table(pruned.speed), title=f"{model}: {title}")
    if random_inputs and _reads_data(pruning):
        console.print(f"[yellow]note:[/] criterion {escape(repr(pruning.criterion))} reads "
                      f"activations, and without --data it ran on the random example inputs "
                      f"only; pass --data for a ranking that means something")
    for option in ("reconstruct", "rotate", "bias_compensation"):
        if random_inputs and getattr(pruning, option, False):
            console.print(f"[yellow]note:[/] --{option.replace('_', '-')} read the random example inputs only, "
                          f"without --data; pass --data for a fit that means something")
    if pruned.heads is not None and pruned.heads.report is not None:
        console.print(escape(f"heads first: check: {pruned.heads.report}"))
    for line in result.details():  # what print(result) says, as it says it
        console.print(escape(line))
    if pruned.distilled is not None:
        console.print(f"recovered: {escape(str(pruned.distilled))}")
    console.print(f"saved to {out}/ (model.safetensors, plan.json)")
    if result.config_matches:
        console.print(f"also saved with save_pretrained to {out / 'hf'}/ "
                      f"(from_pretrained reloads it)")
    elif result.config_matches is False:
        console.print("the pruned sizes differ from what one config can describe: reload it "
                      "with pk.load" + (f"; the tokenizer and other files of the source are "
                                        f"in {out / 'tokenizer'}/"
                                        if (out / "tokenizer").is_dir() else ""))


def _prune_streamed(model: str, checkpoint: Path | None, pruning: PruningMethod,
                    data: str | None, calibration_batches: int, out: Path) -> None:
    """``prune --stream``: the folder pruned block by block into OUT, a Hugging Face folder."""
    from ..streaming.orchestrator import prune_streamed

    if not model.startswith("hf:"):
        raise ConfigError(f"--stream reads a Hugging Face model folder block by block: give "
                          f"--model hf:PATH, not {model!r}")
    if checkpoint is not None:
        raise ConfigError("--checkpoint: --stream reads the weights from the hf:PATH folder "
                          "itself; leave --checkpoint out")
    earlier = out.is_dir() and (out / "config.json").is_file() and (out / "plan.json").is_file()
    check_out(out, {p.name for p in out.iterdir()} if earlier else set())
    calibration = None
    if data is not None and is_language_data(data):
        if SAMPLES_PREFIX in data:
            raise ConfigError("--data samples:N: sampling runs the whole model, which a "
                              "streamed prune never holds; give text:PATH, or prune in memory")
        calibration = language_batches(data, model, None)[:calibration_batches]
    elif data is not None:
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


def _reads_loss(pruning: PruningMethod) -> bool:
    """Whether the method's criterion needs a loss, which random inputs cannot give."""
    entry = _criterion(pruning)
    return entry is not None and getattr(entry.criterion, "reads_loss", False)


def _criterion(pruning: PruningMethod):
    criterion = getattr(pruning, "criterion", None)
    target = getattr(pruning, "target", "layers" if isinstance(pruning, LayerPruning)
                     else "channels")
    try:
        return get_criterion(criterion, target, "") if criterion else None
    except ConfigError:
        return None


def _reads_data(pruning: PruningMethod) -> bool:
    """Whether the method's criterion ranks by activations, losses or outputs on data."""
    entry = _criterion(pruning)
    return entry is not None and entry.needs_data
