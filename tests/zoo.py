"""Small hand-built models covering every coupling the engine must handle.

Each entry is ``name -> (factory, example_inputs factory)``; tests are parametrised over
``ZOO`` so adding a model here tests it everywhere.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def seed_example() -> nn.Module:
    return nn.Sequential(nn.Conv2d(3, 64, 3), nn.ReLU(), nn.Conv2d(64, 128, 3), nn.ReLU(),
                         nn.Conv2d(128, 256, 3))


class BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.downsample = None
        if stride != 1 or cin != cout:
            self.downsample = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False),
                                            nn.BatchNorm2d(cout))

    def forward(self, x):
        identity = x if self.downsample is None else self.downsample(x)
        out = F.relu(self.bn1(self.conv1(x)))
        return F.relu(self.bn2(self.conv2(out)) + identity)


class Bottleneck(nn.Module):
    def __init__(self, cin: int, width: int, cout: int, stride: int = 1, groups: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, width, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, 3, stride, 1, groups=groups, bias=False)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3 = nn.Conv2d(width, cout, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(cout)
        self.downsample = None
        if stride != 1 or cin != cout:
            self.downsample = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False),
                                            nn.BatchNorm2d(cout))

    def forward(self, x):
        identity = x if self.downsample is None else self.downsample(x)
        out = F.relu(self.bn1(self.conv1(x)))
        out = F.relu(self.bn2(self.conv2(out)))
        return F.relu(self.bn3(self.conv3(out)) + identity)


def _classifier(features: nn.Module, channels: int, classes: int = 10) -> nn.Module:
    return nn.Sequential(features, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(channels, classes))


def resnet_basic() -> nn.Module:
    stem = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16), nn.ReLU())
    return _classifier(nn.Sequential(stem, BasicBlock(16, 16), BasicBlock(16, 32, 2),
                                     BasicBlock(32, 32)), 32)


def resnet_bottleneck() -> nn.Module:
    stem = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16), nn.ReLU())
    return _classifier(nn.Sequential(stem, Bottleneck(16, 8, 32), Bottleneck(32, 16, 64, 2),
                                     Bottleneck(64, 16, 64)), 64)


def resnext_block() -> nn.Module:
    stem = nn.Sequential(nn.Conv2d(3, 32, 3, padding=1), nn.ReLU())
    return _classifier(nn.Sequential(stem, Bottleneck(32, 32, 64, groups=4),
                                     Bottleneck(64, 32, 64, groups=8)), 64)


class InceptionBlock(nn.Module):
    def __init__(self, cin: int) -> None:
        super().__init__()
        self.b1 = nn.Conv2d(cin, 8, 1)
        self.b3 = nn.Sequential(nn.Conv2d(cin, 6, 1), nn.ReLU(), nn.Conv2d(6, 12, 3, padding=1))
        self.b5 = nn.Sequential(nn.Conv2d(cin, 4, 1), nn.ReLU(), nn.Conv2d(4, 6, 5, padding=2))
        self.pool = nn.Sequential(nn.MaxPool2d(3, 1, 1), nn.Conv2d(cin, 6, 1))

    def forward(self, x):
        return F.relu(torch.cat([self.b1(x), self.b3(x), self.b5(x), self.pool(x)], dim=1))


def inception() -> nn.Module:
    body = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), InceptionBlock(16),
                         nn.BatchNorm2d(32), InceptionBlock(32), nn.Conv2d(32, 24, 1))
    return _classifier(body, 24)


class SplitNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 32, 3, padding=1)
        self.left = nn.Conv2d(16, 16, 3, padding=1)
        self.right = nn.Conv2d(16, 16, 3, padding=1)
        self.mid = nn.Conv2d(32, 40, 1)
        self.a = nn.Conv2d(8, 8, 1)
        self.b = nn.Conv2d(32, 16, 1)
        self.head = nn.Linear(24, 5)

    def forward(self, x):
        x = F.relu(self.stem(x))
        left, right = x.chunk(2, dim=1)
        x = torch.cat([self.left(left), self.right(right)], dim=1)
        small, large = torch.split(F.relu(self.mid(x)), [8, 32], dim=1)
        x = torch.cat([self.a(small), self.b(large)], dim=1)
        return self.head(x.mean(dim=(2, 3)))


class SqueezeExcite(nn.Module):
    def __init__(self, channels: int, reduced: int) -> None:
        super().__init__()
        self.fc1 = nn.Conv2d(channels, reduced, 1)
        self.fc2 = nn.Conv2d(reduced, channels, 1)

    def forward(self, x):
        gate = torch.sigmoid(self.fc2(F.relu(self.fc1(F.adaptive_avg_pool2d(x, 1)))))
        return x * gate


def depthwise_se() -> nn.Module:
    body = nn.Sequential(
        nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.Hardswish(),
        nn.Conv2d(16, 16, 3, padding=1, groups=16), nn.BatchNorm2d(16), nn.ReLU6(),
        SqueezeExcite(16, 4), nn.Conv2d(16, 32, 1), nn.BatchNorm2d(32), nn.SiLU(),
        nn.Conv2d(32, 64, 3, padding=1, groups=32), nn.BatchNorm2d(64), nn.ReLU(),
        nn.Conv2d(64, 24, 1))
    return _classifier(body, 24)


def channel_shuffle(x: torch.Tensor, groups: int) -> torch.Tensor:
    b, c, h, w = x.shape
    return x.view(b, groups, c // groups, h, w).transpose(1, 2).reshape(b, c, h, w)


class ShuffleUnit(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        half = channels // 2
        self.branch = nn.Sequential(
            nn.Conv2d(half, half, 1, bias=False), nn.BatchNorm2d(half), nn.ReLU(),
            nn.Conv2d(half, half, 3, padding=1, groups=half, bias=False), nn.BatchNorm2d(half),
            nn.Conv2d(half, half, 1, bias=False), nn.BatchNorm2d(half), nn.ReLU())

    def forward(self, x):
        left, right = x.chunk(2, dim=1)
        return channel_shuffle(torch.cat([left, self.branch(right)], dim=1), 2)


def shufflenet() -> nn.Module:
    body = nn.Sequential(nn.Conv2d(3, 32, 3, padding=1), nn.ReLU(), ShuffleUnit(32),
                         ShuffleUnit(32), nn.Conv2d(32, 48, 1))
    return _classifier(body, 48)


class UNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.enc = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.ReLU())
        self.down = nn.Sequential(nn.MaxPool2d(2), nn.Conv2d(16, 32, 3, padding=1), nn.ReLU())
        self.up = nn.ConvTranspose2d(32, 16, 2, stride=2)
        self.dec = nn.Sequential(nn.Conv2d(32, 16, 3, padding=1), nn.ReLU())
        self.out = nn.Conv2d(16, 2, 1)

    def forward(self, x):
        skip = self.enc(x)
        x = self.up(self.down(skip))
        return self.out(self.dec(torch.cat([x, skip], dim=1)))


def conv_flatten_linear() -> nn.Module:
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 12, 3, stride=2),
                         nn.ReLU(), nn.Flatten(), nn.Linear(12 * 3 * 3, 32), nn.ReLU(),
                         nn.Dropout(0.1), nn.Linear(32, 4))


def conv1d_net() -> nn.Module:
    return nn.Sequential(nn.Conv1d(4, 16, 5, padding=2), nn.BatchNorm1d(16), nn.ReLU(),
                         nn.Conv1d(16, 32, 3), nn.ReLU(), nn.MaxPool1d(2),
                         nn.Conv1d(32, 16, 3, groups=4), nn.AdaptiveAvgPool1d(1), nn.Flatten(),
                         nn.Linear(16, 3))


def conv3d_net() -> nn.Module:
    return nn.Sequential(nn.Conv3d(2, 8, 3, padding=1), nn.BatchNorm3d(8), nn.ReLU(),
                         nn.Conv3d(8, 16, 3, stride=2), nn.ReLU(),
                         nn.ConvTranspose3d(16, 8, 2, stride=2), nn.ReLU(),
                         nn.AdaptiveAvgPool3d(1), nn.Flatten(), nn.Linear(8, 3))


class LayerScaleBlock(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)
        self.gamma = nn.Parameter(torch.rand(1, channels, 1, 1) + 0.5)

    def forward(self, x):
        return x + self.gamma * F.gelu(self.conv(x))


def layer_scale() -> nn.Module:
    body = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), LayerScaleBlock(16), LayerScaleBlock(16))
    return _classifier(body, 16)


class NormZoo(nn.Module):
    """GroupNorm, PReLU, InstanceNorm and a channels-last LayerNorm MLP block."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 16, 3, padding=1)
        self.gn = nn.GroupNorm(4, 16)
        self.act = nn.PReLU(16)
        self.conv2 = nn.Conv2d(16, 24, 3, padding=1)
        self.inorm = nn.InstanceNorm2d(24, affine=True)
        self.ln = nn.LayerNorm(24)
        self.fc1 = nn.Linear(24, 48)
        self.fc2 = nn.Linear(48, 24)
        self.head = nn.Linear(24, 5)

    def forward(self, x):
        x = self.act(self.gn(self.conv1(x)))
        x = F.relu(self.inorm(self.conv2(x)))
        y = x.permute(0, 2, 3, 1)  # channels-last block, as in ConvNeXt
        y = self.fc2(F.gelu(self.fc1(self.ln(y))))
        x = x + y.permute(0, 3, 1, 2)
        return self.head(x.flatten(2).mean(-1))


class DictModel(nn.Module):
    """Keyword inputs, a dict output with two heads."""

    def __init__(self) -> None:
        super().__init__()
        self.backbone = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(),
                                      nn.Conv2d(16, 32, 3, padding=1), nn.ReLU())
        self.meta = nn.Linear(6, 32)
        self.classes = nn.Linear(32, 4)
        self.boxes = nn.Conv2d(32, 4, 1)

    def forward(self, image, meta):
        features = self.backbone(image)
        pooled = features.mean(dim=(2, 3)) + F.relu(self.meta(meta))
        return {"logits": self.classes(pooled), "boxes": self.boxes(features)}


class ControlFlow(nn.Module):
    """Python control flow in forward: a data-dependent branch and a loop."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 16, 3, padding=1)
        self.blocks = nn.ModuleList(nn.Conv2d(16, 16, 3, padding=1) for _ in range(3))
        self.other = nn.Conv2d(16, 16, 1)
        self.head = nn.Linear(16, 3)

    def forward(self, x, repeats: int = 2):
        x = F.relu(self.stem(x))
        for i in range(repeats):
            x = x + F.relu(self.blocks[i](x))
        if x.mean() > 0:
            x = self.other(x)
        return self.head(x.mean(dim=(2, 3)))


class TokenModel(nn.Module):
    """Embedding → MLP over tokens → pooled classifier."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(50, 16)
        self.fc1 = nn.Linear(16, 32)
        self.fc2 = nn.Linear(32, 16)
        self.head = nn.Linear(16, 2)

    def forward(self, ids):
        x = self.embed(ids)
        x = x + self.fc2(F.relu(self.fc1(x)))
        return self.head(x.sum(dim=1))


def _image(size: int = 16, channels: int = 3):
    return lambda: torch.randn(2, channels, size, size)


ZOO = {
    "seed_example": (seed_example, _image(12)),
    "resnet_basic": (resnet_basic, _image()),
    "resnet_bottleneck": (resnet_bottleneck, _image()),
    "resnext_grouped": (resnext_block, _image()),
    "inception_concat": (inception, _image()),
    "split_chunk": (SplitNet, _image()),
    "depthwise_se": (depthwise_se, _image()),
    "channel_shuffle": (shufflenet, _image()),
    "unet": (UNet, _image()),
    "conv_flatten_linear": (conv_flatten_linear, _image(8)),
    "conv1d": (conv1d_net, lambda: torch.randn(2, 4, 20)),
    "conv3d": (conv3d_net, lambda: torch.randn(2, 2, 8, 8, 8)),
    "layer_scale": (layer_scale, _image()),
    "norms": (NormZoo, _image()),
    "dict_io": (DictModel, lambda: {"image": torch.randn(2, 3, 8, 8), "meta": torch.randn(2, 6)}),
    "control_flow": (ControlFlow, _image()),
    "embedding": (TokenModel, lambda: torch.randint(0, 50, (2, 7))),
}
