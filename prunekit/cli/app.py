"""The ``prunekit`` application and what its commands share: the help texts of shared options,
building a method from its options, one-line errors, progress, and tables rendered from the
results' own ``table()`` (what ``print(result)`` shows in Python)."""

from __future__ import annotations

import re
import sys
from contextlib import contextmanager
from typing import Iterator

try:
    import typer
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table
except ImportError as error:  # the command line is an extra
    raise SystemExit("the prunekit command needs its extra: pip install 'prunekit[cli]'") from error

from ..core.progress import ConsoleProgress, Reporter
from ..core.tables import ResultTable
from ..errors import ConfigError, PlanError, TraceError, did_you_mean
from ..importance import criterion_names
from ..measure.model import measure
from ..methods import PruningMethod, cli_methods
from .model_sources import model_help

# click's own help layout (rich_markup_mode=None) wraps every option's text at the terminal's
# width; rich's tables cut option names short on an 80-column terminal
app = typer.Typer(help="Structured pruning for PyTorch models.", no_args_is_help=True,
                  pretty_exceptions_enable=False, rich_markup_mode=None)
# without a terminal (a pipe, a CI log) rich would assume 80 columns and cut table cells to
# "(influen…"; a log has room, so tables keep their full text there
console = Console(width=None if sys.stdout.isatty() else 400)

METHOD_HELP = " | ".join(cli_methods())
MODEL_HELP = model_help()
CHECKPOINT_HELP = ("trained weights to load before pruning: a state dict in .safetensors or a "
                   "PyTorch file (read with weights_only=True)")
TRUST_PICKLE_HELP = ("read an Ultralytics .pt file as Ultralytics does, by unpickling it, which "
                     "can run code stored in the file: only for a file you trust (by default "
                     "only PyTorch and Ultralytics module classes may be named in it)")
CALIBRATION_HELP = "training batches data-driven criteria read"
CRITERION_HELP = ("channels: " + ", ".join(criterion_names("channels"))
                  + "; heads: " + ", ".join(criterion_names("heads"))
                  + "; layers: " + ", ".join(criterion_names("layers"))
                  + ". Default: the method's own (l1; influence for layers)")


def fail(error: Exception) -> None:
    """One line on stderr; exit code 2 for a mistake in the options or inputs, 1 when the
    pruning itself could not be done."""
    text = " ".join(line.strip() for line in str(error).splitlines() if line.strip())
    # the option the user typed, not the Python field behind it: "--criterion", not
    # "FilterPruning.criterion"
    text = re.sub(r"\b[A-Z][A-Za-z]*Pruning\.([a-z_]+)",
                  lambda field: "--" + field.group(1).replace("_", "-"), text)
    typer.echo(f"error: {text}", err=True)  # one line, whatever the message held
    mistake = isinstance(error, (ConfigError, TraceError, PlanError))
    raise typer.Exit(code=2 if mistake else 1)


def method_from_options(name: str, criterion: str | None, optional: dict | None = None,
                        **options) -> PruningMethod:
    """The pruning method ``--method`` names, built from the options (its own checks name a
    bad option; an option it does not take is refused by ``PruningMethod.from_options``)."""
    methods = cli_methods()
    if name not in methods:
        raise ConfigError(f"--method {name!r}: choose one of {sorted(methods)}"
                          f"{did_you_mean(name, list(methods))}")
    # without --criterion, the method's own default, as in Python
    return methods[name].from_options(optional, criterion=criterion, **options)


def parse_round_to(text: str) -> int | str:
    """``--round-to``: a number of channels, or ``measured``."""
    try:
        return int(text)
    except ValueError:
        if text == "measured":
            return text
        raise ConfigError(f"--round-to {text!r}: give a number of channels (8) or "
                          f"'measured' (widths timed on this machine)") from None


def measure_unpruned(network, x):
    """The model's size as it is; inputs it cannot run are a bad option."""
    try:
        return measure(network, x, latency=False)
    except Exception as error:
        raise ConfigError(f"the model does not run on the example inputs (--input-shape or "
                          f"--data): {type(error).__name__}: {error}") from error


def show(table: ResultTable, title: str | None = None) -> None:
    """A result's table as a rich table, its notes under it."""
    shown = Table(title=escape(title or table.title))
    for column, side in zip(table.columns, table.alignment()):
        shown.add_column(escape(column), justify="left" if side == "l" else "right")
    for row in table.rows:
        shown.add_row(*map(escape, row))
    console.print(shown)
    for note in table.notes:
        console.print(escape(note))


@contextmanager
def progress() -> Iterator[Reporter]:
    """What the library's ``progress=`` gets: each stage, its item and the time left on
    stderr (rewritten in place on a terminal, a line per stage in a log), ended on the way
    out."""
    report = ConsoleProgress(sys.stderr)
    try:
        yield report
    finally:
        report.close()
