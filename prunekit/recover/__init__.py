"""Recovering accuracy after pruning: training and evaluation helpers."""

from .trainer import evaluate_accuracy, train_classifier

__all__ = ["evaluate_accuracy", "train_classifier"]
