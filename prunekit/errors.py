"""Errors raised by prunekit. Each names the module and what is wrong."""


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
