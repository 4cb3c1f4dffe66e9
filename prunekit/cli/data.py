"""Real data that ships offline: scikit-learn's handwritten digits as 1×8×8 images."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch.utils.data import DataLoader, TensorDataset


@dataclass
class Digits:
    train: DataLoader
    test: DataLoader
    calibration: DataLoader  # a few unshuffled training batches, for data-driven criteria

    @property
    def example_inputs(self) -> torch.Tensor:
        return next(iter(self.test))[0][:1]


def load_digits(batch_size: int = 64, test_fraction: float = 0.25, seed: int = 0) -> Digits:
    """The 1,797 digit images, scaled to [0, 1], split into train and test with a fixed seed."""
    from sklearn.datasets import load_digits as sklearn_digits

    bunch = sklearn_digits()
    images = torch.tensor(bunch.images, dtype=torch.float32).unsqueeze(1) / 16.0
    labels = torch.tensor(bunch.target, dtype=torch.long)
    order = torch.randperm(len(labels), generator=torch.Generator().manual_seed(seed))
    n_test = int(len(labels) * test_fraction)
    test, train = order[:n_test], order[n_test:]
    generator = torch.Generator().manual_seed(seed)
    train_set = TensorDataset(images[train], labels[train])
    return Digits(
        train=DataLoader(train_set, batch_size=batch_size, shuffle=True, generator=generator),
        test=DataLoader(TensorDataset(images[test], labels[test]), batch_size=256),
        calibration=DataLoader(train_set, batch_size=batch_size, shuffle=False))


def digits_loaders() -> tuple[DataLoader, DataLoader]:
    """``(train, test)`` digits batches: the form ``prunekit iterative --data`` reads."""
    digits = load_digits()
    return digits.train, digits.test
