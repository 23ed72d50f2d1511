"""Plain nn.Modules that tests build through the factory path (`tests/plain_nets.py:small_cnn`)."""

from __future__ import annotations

import torch
from torch import nn


class SmallCNN(nn.Module):
    """conv → bn → two conv blocks → adaptive pooling → fc: BatchNorm to freeze, any input size."""

    def __init__(self, num_classes: int = 4, width: int = 8) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, width, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.block1 = nn.Sequential(nn.Conv2d(width, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU())
        self.block2 = nn.Sequential(nn.Conv2d(width, 2 * width, 3, stride=2, padding=1), nn.BatchNorm2d(2 * width),
                                    nn.ReLU())
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(2 * width, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.block2(self.block1(torch.relu(self.bn1(self.conv1(x)))))
        return self.fc(self.pool(x).flatten(1))


def small_cnn(num_classes: int = 4, width: int = 8) -> nn.Module:
    return SmallCNN(num_classes, width)


class FixedSizeCNN(nn.Module):
    """A network whose classifier only fits 16x16 inputs (Flatten → Linear), as many hand-written CNNs are."""

    def __init__(self, num_classes: int = 4) -> None:
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2))
        self.classifier = nn.Sequential(nn.Flatten(), nn.Linear(4 * 8 * 8, 16), nn.ReLU(), nn.Linear(16, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


def fixed_size_cnn(num_classes: int = 4) -> nn.Module:
    return FixedSizeCNN(num_classes)
