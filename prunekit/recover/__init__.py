"""Recovering accuracy after pruning: training, evaluation and reconstruction."""

from .reconstruct import reconstruct
from .trainer import evaluate_accuracy, train_classifier

__all__ = ["evaluate_accuracy", "reconstruct", "train_classifier"]
