"""Coverage: prune every model in ``contracts/model_cases.py`` at 0.5 with FilterPruning("l1").

For each model: trace and prune times, params and FLOPs before and after, the equivalence
error of the masked vs the pruned model, output structure, and a backward pass. Writes
``benchmarks/results/coverage.json`` and ``coverage.md``.

    python benchmarks/coverage.py                    # everything (about half an hour on 2 cores)
    python benchmarks/coverage.py --family timm      # one family
"""

from __future__ import annotations

import argparse
import gc
import json
import traceback
from typing import Any

from harness import RESULTS, write_text

import torch

from contracts.coverage import check_case
from contracts.model_cases import ModelCase, cases


def run(selected: list[ModelCase]) -> list[dict[str, Any]]:
    rows = []
    for index, case in enumerate(selected, 1):
        try:
            row = {"status": "pass", **check_case(case)}
        except Exception as error:  # a failing model is a result, not a crash
            row = {"status": "fail", "family": case.family, "model": case.name,
                   "error": f"{type(error).__name__}: {error}"[:400]}
            traceback.print_exc(limit=2)
        rows.append(row)
        print(f"[{index}/{len(selected)}] {case.id}: {row['status']}", flush=True)
        gc.collect()
    return rows


def write(rows: list[dict[str, Any]], stem: str = "coverage") -> None:
    write_text(RESULTS / f"{stem}.json", json.dumps(rows, indent=1))
    lines = ["# Coverage: FilterPruning(ratio=0.5, criterion='l1'), random weights", ""]
    for family in dict.fromkeys(r["family"] for r in rows):
        family_rows = [r for r in rows if r["family"] == family]
        passed = sum(r["status"] == "pass" for r in family_rows)
        lines.append(f"- **{family}**: {passed} of {len(family_rows)} pass")
    lines += ["", "| family | model | status | params before → after | FLOPs before → after | "
              "equivalence error | trace s | prune s | groups skipped | ops without a rule |",
              "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        if r["status"] != "pass":
            lines.append(f"| {r['family']} | {r['model']} | **fail** | {r['error']} | | | | | | |")
            continue
        lines.append(
            f"| {r['family']} | {r['model']} | pass | {r['params_before']:,} → {r['params_after']:,} "
            f"(-{1 - r['params_after'] / r['params_before']:.0%}) | {r['flops_before']:,} → "
            f"{r['flops_after']:,} (-{1 - r['flops_after'] / max(r['flops_before'], 1):.0%}) | "
            f"{r['equivalence_error']:.1e} | {r['trace_s']:.2f} | {r['prune_s']:.2f} | "
            f"{r['skipped_groups']} | {', '.join(r['unknown_ops']) or '—'} |")
    write_text(RESULTS / f"{stem}.md", "\n".join(lines) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--family", help="only this family (e.g. timm)")
    parser.add_argument("--only", nargs="*", help="only these model names")
    parser.add_argument("--out", default="coverage", help="result file stem")
    parser.add_argument("--merge", action="store_true",
                        help="replace only these models' rows in the existing result file")
    args = parser.parse_args()
    selected = [c for c in cases(args.family) if not args.only or c.name in args.only]
    torch.set_num_threads(max(1, torch.get_num_threads()))
    rows = run(selected)
    if args.merge:
        fresh = {(r["family"], r["model"]): r for r in rows}
        existing = json.loads((RESULTS / f"{args.out}.json").read_text())
        rows = [fresh.pop((r["family"], r["model"]), r) for r in existing] + list(fresh.values())
    write(rows, args.out)


if __name__ == "__main__":
    main()
