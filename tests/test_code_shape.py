"""The code stays easy to read and change: no file over 500 lines, no function over 60 lines
of code, at most 10 modules at the top of the package, and at most 8 parameters a function.

A function's length is its code: the lines from its first statement after the docstring to
its end (a public call's docstring documents every option and may be long). Two kinds of
function may take more than 8 parameters: a command-line command, whose parameters are the
options the user types (typer reads them from the signature), and a public call whose
options past the first four are keyword-only, so every call site names them.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import prunekit

ROOT = Path(prunekit.__file__).parent
FILES = sorted(ROOT.rglob("*.py"))
MAX_FILE_LINES, MAX_FUNCTION_LINES, MAX_PARAMETERS, MAX_TOP_MODULES = 500, 60, 8, 10


def _functions(path: Path):
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            yield node


def _code_lines(function: ast.FunctionDef) -> int:
    body = function.body
    if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant) \
            and isinstance(body[0].value.value, str):
        body = body[1:]  # the docstring
    return function.end_lineno - body[0].lineno + 1 if body else 0


def _parameters(function: ast.FunctionDef) -> tuple[int, int]:
    """(all parameters, those that may be given by position), ``self``/``cls`` left out."""
    arguments = function.args
    positional = arguments.posonlyargs + arguments.args
    if positional and positional[0].arg in ("self", "cls"):
        positional = positional[1:]
    return len(positional) + len(arguments.kwonlyargs), len(positional)


def _is_command(function: ast.FunctionDef) -> bool:
    return any(ast.unparse(d).endswith("command()") for d in function.decorator_list)


@pytest.mark.parametrize("path", FILES, ids=lambda p: str(p.relative_to(ROOT)))
def test_no_file_is_over_500_lines(path):
    lines = path.read_text().count("\n")
    assert lines <= MAX_FILE_LINES, f"{path.relative_to(ROOT)}: {lines} lines; split it"


@pytest.mark.parametrize("path", FILES, ids=lambda p: str(p.relative_to(ROOT)))
def test_no_function_is_over_60_lines_or_8_parameters(path):
    too_long, too_many = [], []
    for function in _functions(path):
        if _code_lines(function) > MAX_FUNCTION_LINES:
            too_long.append(f"{function.name} ({_code_lines(function)} lines)")
        count, positional = _parameters(function)
        if count > MAX_PARAMETERS and not _is_command(function) and positional > 4:
            too_many.append(f"{function.name} ({count} parameters, {positional} positional)")
    assert not too_long, f"{path.relative_to(ROOT)}: split {too_long}"
    assert not too_many, (f"{path.relative_to(ROOT)}: {too_many}: group them, or make the "
                          f"options past the fourth keyword-only")


def test_at_most_10_modules_at_the_top_of_the_package():
    top = sorted(p.name for p in ROOT.glob("*.py"))
    assert len(top) <= MAX_TOP_MODULES, top


def test_the_limits_can_fail(tmp_path):
    """The checks above measure what they say: a long, wide function is caught."""
    source = ("def wide(a, b, c, d, e, f, g, h, i):\n    '''doc'''\n"
              + "    x = 1\n" * 61)
    (tmp_path / "long.py").write_text(source)
    function = next(_functions(tmp_path / "long.py"))
    assert _code_lines(function) == 61 and _parameters(function) == (9, 9)
