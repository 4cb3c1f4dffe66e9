"""Errors raised by prunekit. Each names the module and what is wrong."""

import difflib


class PruneError(Exception):
    """Base class for every error prunekit raises on purpose."""


class TraceError(PruneError):
    """The example inputs could not be run through the model, or an op could not be traced."""


class UnsupportedOpError(TraceError):
    """An op the engine does not understand touched prunable channels (raised with ``strict=True``)."""


class PlanError(PruneError):
    """A plan does not fit the model it is applied to."""


class ConfigError(PruneError, ValueError):
    """A pruning method or an argument was given a bad value."""


def did_you_mean(name: object, choices: list[str], cutoff: float = 0.5) -> str:
    """``"; did you mean 'l1', 'l2'?"`` for a misspelt ``name``, or nothing; ``cutoff`` is
    difflib's similarity below which a choice is not offered."""
    close = (difflib.get_close_matches(name, choices, n=3, cutoff=cutoff)
             if isinstance(name, str) else [])
    return f"; did you mean {', '.join(map(repr, close))}?" if close else ""
