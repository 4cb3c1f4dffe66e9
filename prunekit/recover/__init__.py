"""Recovering accuracy after pruning: training, distillation, evaluation and reconstruction."""

from .distill import Distillation, DistillResult, distill
from .norms import recalibrate_norms
from .reconstruct import reconstruct
from .trainer import evaluate_accuracy, norm_scale_l1, train_classifier

__all__ = ["DistillResult", "Distillation", "distill", "evaluate_accuracy", "recalibrate_norms", "norm_scale_l1", "reconstruct",
           "train_classifier"]
