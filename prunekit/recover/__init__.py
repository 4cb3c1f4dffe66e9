"""Recovering accuracy after pruning: training, evaluation and reconstruction."""

from .norms import recalibrate_norms
from .reconstruct import reconstruct
from .trainer import evaluate_accuracy, train_classifier

__all__ = ["evaluate_accuracy", "recalibrate_norms", "reconstruct", "train_classifier"]
