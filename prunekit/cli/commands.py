"""The ``prunekit`` command: every command registered with ``app`` (``prune``; ``export`` and
``analyze``; ``iterative``, ``sensitivity``, ``demo`` and ``compare``), and ``main``, its
entry point."""

from __future__ import annotations

import typer

from . import export, prune, workflows  # noqa: F401  (each registers its commands with app)
from .app import app

__all__ = ["app", "main"]


def main(argv: list[str] | None = None) -> None:
    """The ``prunekit`` command: ``app`` with every mistake in the options one ``error:``
    line (exit code 2) instead of click's framed usage box."""
    # typer's own copy of click: BadParameter's first base is its UsageError, whose base is
    # the ClickException every usage mistake raises
    click_exception = typer.BadParameter.__mro__[2]
    try:
        # outside standalone mode click returns the code typer.Exit carried, not raises it
        code = app(args=argv, standalone_mode=False)
    except typer.Abort:
        typer.echo("error: interrupted", err=True)
        raise SystemExit(130) from None
    except click_exception as error:
        text = " ".join(line.strip() for line in error.format_message().splitlines()
                        if line.strip())
        if not text:  # no arguments at all: the help was the answer
            raise SystemExit(error.exit_code) from None
        typer.echo(f"error: {text}" + (f" (see prunekit {error.ctx.info_name} --help)"
                                       if getattr(error, "ctx", None) is not None
                                       and error.ctx.parent is not None else ""), err=True)
        raise SystemExit(error.exit_code) from None
    except typer.Exit as done:  # the code a command chose
        raise SystemExit(done.exit_code) from None
    if isinstance(code, int) and code:
        raise SystemExit(code)


if __name__ == "__main__":
    main()
