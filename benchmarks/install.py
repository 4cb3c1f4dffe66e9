"""What installing prunekit costs: the time and disk of the Quickstart's development install
and of the light install, each into a new virtual environment from a clean clone of this
repository, with pip's cache off (as on a fresh machine; the package index is whatever pip
is configured with). The Quickstart's demo is timed after the development install.

    python benchmarks/install.py

Results: ``benchmarks/results/install.{json,md}``.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from harness import ROOT, arguments, markdown_table, write_results

# (name, pip arguments); the Quickstart's install is editable
INSTALLS = {"light": ["."], "development (the Quickstart's)": ["-e", ".[dev]"]}


def size(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file() and not f.is_symlink())


def run(command: list[str], cwd: Path) -> float:
    started = time.perf_counter()
    subprocess.run(command, cwd=cwd, check=True, stdout=subprocess.DEVNULL,
                   stderr=subprocess.DEVNULL)
    return time.perf_counter() - started


def main() -> None:
    arguments(__doc__).parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as scratch:
        clone = Path(scratch) / "prunekit"
        subprocess.run(["git", "clone", "-q", str(ROOT), str(clone)], check=True)
        for name, target in INSTALLS.items():
            venv = Path(scratch) / "venv"
            seconds = run([sys.executable, "-m", "venv", str(venv)], clone)
            seconds += run([str(venv / "bin" / "pip"), "install", "-q", "--no-cache-dir",
                            *target], clone)
            packages = venv / "lib" / f"python{sys.version_info.major}.{sys.version_info.minor}"
            cuda = packages / "site-packages" / "nvidia"
            row = {"install": name, "command": "pip install " + " ".join(
                       f'"{a}"' if "[" in a else a for a in target),
                   "seconds": seconds, "bytes": size(venv),
                   "cuda_bytes": size(cuda) if cuda.exists() else 0}
            if ".[dev]" in target:
                row["demo_seconds"] = run([str(venv / "bin" / "prunekit"), "demo", "--out",
                                           str(Path(scratch) / "demo")], clone)
            rows.append(row)
            print(row, flush=True)
            shutil.rmtree(venv)
    data = {"python": sys.version.split()[0], "rows": rows}
    write_results("install", data, to_markdown(data))
    print(to_markdown(data))


def to_markdown(data: dict) -> str:
    table = markdown_table(
        ["install", "command", "time", "environment on disk", "of which CUDA libraries"],
        [[r["install"], f"`{r['command']}`", f"{r['seconds'] / 60:.1f} min",
          f"{r['bytes'] / 1e9:.1f} GB", f"{r['cuda_bytes'] / 1e9:.1f} GB"]
         for r in data["rows"]])
    demo = next((r["demo_seconds"] for r in data["rows"] if "demo_seconds" in r), None)
    return ("# Installing prunekit\n\n"
            f"Each install into a new virtual environment (Python {data['python']}) from a "
            f"clean clone, pip's cache off; two cores. Reproduce: `python "
            f"benchmarks/install.py`.\n\n" + table + "\n"
            + (f"\nThe demo (`prunekit demo`) then ran in {demo / 60:.1f} minutes.\n"
               if demo is not None else "")
            + "\nMost of either environment is PyTorch's Linux wheel and the CUDA libraries "
              "it depends on, installed on a machine without a GPU too; installing PyTorch "
              "first from its CPU-only index, where you can reach it, leaves them out.\n")


if __name__ == "__main__":
    main()
