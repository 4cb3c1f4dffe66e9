"""The import graph runs one way: every module imports only from its own layer or the
layers below it, and no two modules import each other, directly or round a circle.

The layers, lowest first (a module is placed by its first package under ``prunekit``):
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import prunekit

LAYERS = [
    ("errors", "plan"),                                   # plain data and errors
    ("core", "measure"),                                  # calling, batches, arguments,
                                                          # processes; counting and timing
    ("graph",),                                           # trace, coupling rules, groups
    ("surgery", "export"),                                # applying a plan; checkpoints and
                                                          # deployment formats
    ("candidates",),                                      # which layers a network can lose
    ("importance",),                                      # criteria
    ("selection", "recover"),                             # kept channels and budgets;
                                                          # re-fits and training
    ("checks",),                                          # what a pruned model must satisfy
    ("methods",),                                         # each method: the stages it runs
    ("api", "adapters"),                                  # pk.prune; Hugging Face and
                                                          # Ultralytics adapters
    ("streaming",),                                       # the streamed orchestrator
    ("workflows",),                                       # iterative, sensitivity, compare
    ("cli", "integrations", "__init__"),                  # the command line; old import
                                                          # paths; the package
]
RANK = {name: rank for rank, names in enumerate(LAYERS) for name in names}
ROOT = Path(prunekit.__file__).parent


def _modules() -> dict[str, Path]:
    found = {}
    for path in ROOT.rglob("*.py"):
        parts = path.relative_to(ROOT.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        found[name] = path
    return found


def _imports(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """Every prunekit module ``name`` imports, at its top or inside a function."""
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            base = package.split(".")
            target = (".".join(base[:len(base) - node.level + 1] + [node.module or ""])
                      if node.level else node.module or "").rstrip(".")
            subs = [f"{target}.{a.name}" for a in node.names if f"{target}.{a.name}" in modules]
            found |= set(subs) if len(subs) == len(node.names) else {target, *subs}
        elif isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
    return {m for m in found if m in modules and m != name}


def _layer(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


GRAPH = {name: _imports(name, path, _modules()) for name, path in _modules().items()}


@pytest.mark.parametrize("module", sorted(GRAPH))
def test_a_module_imports_only_from_its_layer_or_below(module):
    assert _layer(module) in RANK, f"{module}: place its package in LAYERS"
    upward = sorted(m for m in GRAPH[module] if RANK[_layer(m)] > RANK[_layer(module)])
    assert not upward, f"{module} imports up: {upward}"


def test_no_modules_import_each_other_round_a_circle():
    # a package's own __init__ importing its modules (registration) is not a circle back
    edges = {m: {t for t in targets if t != m.rsplit(".", 1)[0]} for m, targets in GRAPH.items()}
    state: dict[str, int] = {}

    def visit(module: str, path: list[str]) -> None:
        state[module] = 1
        for target in sorted(edges[module]):
            if state.get(target) == 1:
                cycle = path[path.index(target):] + [target] if target in path else [target]
                pytest.fail("import circle: " + " -> ".join(cycle))
            if target not in state:
                visit(target, path + [target])
        state[module] = 2

    for module in sorted(edges):
        if module not in state:
            visit(module, [module])
