"""Checks of a pruned model: the masked-vs-pruned oracle (``verify``), the check each method
asks for (``checks``), and the bisection that leaves out the pieces that fail it."""

from .bisection import Bisection, SkippedGroup, largest_passing_plan
from .checks import BlocksBypassed, Check, CheckReport, Equivalence, Runs, shapes_allowed
from .comparison import DEFAULT_TOLERANCE, OutputComparison, VerifyReport, tolerance_for
from .verify import CheckInputs, PrunedModelFailed, mask, verify

__all__ = ["DEFAULT_TOLERANCE", "Bisection", "BlocksBypassed", "Check", "CheckInputs",
           "CheckReport", "Equivalence", "OutputComparison", "PrunedModelFailed", "Runs",
           "SkippedGroup", "VerifyReport", "largest_passing_plan", "mask", "shapes_allowed",
           "tolerance_for", "verify"]
