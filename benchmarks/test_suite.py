"""How long the test tiers take and how much memory they need, on this machine.

Runs each tier in its own process (``python -m pytest -q``, the fast tier with
``-m "not slow"``) and records its wall time, its pytest summary line and its peak resident
memory (the child's ``ru_maxrss``). Writes ``benchmarks/results/test_suite.{json,md}``.

    python benchmarks/test_suite.py            # both tiers (about 40 minutes on 2 cores)
"""

from __future__ import annotations

import os
import platform
import subprocess
import sys
import time

from harness import ROOT, arguments, markdown_table, write_results

TIERS = {"fast": ["-m", "not slow"], "full": []}


# A fresh wrapper process per tier: its RUSAGE_CHILDREN peak is that tier's pytest alone.
WRAPPER = ("import resource, subprocess, sys; done = subprocess.run(sys.argv[1:]); "
           "print('peak_kb', resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss); "
           "sys.exit(done.returncode)")


def run_tier(name: str, options: list[str]) -> dict:
    pytest = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *options]
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", WRAPPER, *pytest], cwd=ROOT,
                          capture_output=True, text=True)
    seconds = time.perf_counter() - start
    lines = done.stdout.strip().splitlines()
    peak_kb = int(lines[-1].split()[1])
    return {"tier": name, "command": " ".join(["python", *pytest[1:]]), "seconds": seconds,
            "summary": lines[-2] if len(lines) > 1 else "", "exit_code": done.returncode,
            "peak_rss_gb": peak_kb / 1e6}


def main() -> None:
    arguments(__doc__).parse_args()
    rows = [run_tier(name, options) for name, options in TIERS.items()]
    machine = f"{os.cpu_count()} CPU cores, {platform.python_version()}"
    table = markdown_table(
        ["tier", "command", "wall time", "peak resident memory", "result"],
        [[r["tier"], f"`{r['command']}`", f"{r['seconds'] / 60:.1f} min",
          f"{r['peak_rss_gb']:.1f} GB", r["summary"]] for r in rows])
    markdown = f"# Test tiers ({machine})\n\n{table}\n"
    write_results("test_suite", {"machine": machine, "tiers": rows}, markdown)
    print(markdown)


if __name__ == "__main__":
    main()
