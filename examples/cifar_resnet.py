"""The CIFAR ResNet of He et al. 2016 ("Deep Residual Learning for Image Recognition", section 4.2).

Three stages of 3x3 basic blocks on 32x32, 16x16 and 8x8 maps with 16, 32 and 64 filters, global average
pooling and one linear layer: 6n + 2 layers, so n = 3 gives ResNet-20 (0.27M parameters) and n = 5 ResNet-32.
Shortcuts are option A: identity, and where a stage halves the map and doubles the filters, the input is
subsampled with stride 2 and padded with zero channels, so shortcuts add no parameters.

The module names match the published CIFAR-10 checkpoint `../shared/data/cifar10-resnet20/resnet20-12fca82f.th`
(a dict whose `state_dict` has every key prefixed `module.`, from nn.DataParallel), which loads into `resnet20()`:

    checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    model.load_state_dict({k.removeprefix("module."): v for k, v in checkpoint["state_dict"].items()})

It expects 32x32 RGB scaled to [0, 1] and normalised with the ImageNet mean [0.485, 0.456, 0.406] and
std [0.229, 0.224, 0.225]. Other sizes run too: the pooling covers whatever map the last stage produces.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class Subsample(nn.Module):
    """Option-A shortcut where the shape changes: stride-2 subsampling, zero channels padded on both sides."""

    def __init__(self, planes: int) -> None:
        super().__init__()
        self.pad = planes // 4

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.pad(x[:, :, ::2, ::2], (0, 0, 0, 0, self.pad, self.pad))


class BasicBlock(nn.Module):
    """Two 3x3 conv-BN layers and a parameter-free shortcut, added before the last ReLU."""

    def __init__(self, in_planes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, kernel_size=3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, kernel_size=3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        changes = stride != 1 or in_planes != planes
        self.shortcut: nn.Module = Subsample(planes) if changes else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class CifarResNet(nn.Module):
    """conv1-bn1, three stages (`layer1`..`layer3`) of `blocks` basic blocks each, average pooling, `linear`."""

    def __init__(self, blocks: int, num_classes: int = 10) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 16, kernel_size=3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        self.layer1 = _stage(16, 16, blocks, stride=1)
        self.layer2 = _stage(16, 32, blocks, stride=2)
        self.layer3 = _stage(32, 64, blocks, stride=2)
        self.linear = nn.Linear(64, num_classes)
        for module in self.modules():
            if isinstance(module, (nn.Conv2d, nn.Linear)):
                nn.init.kaiming_normal_(module.weight)  # He et al. 2015, the init the paper trains from

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.layer3(self.layer2(self.layer1(out)))
        out = F.avg_pool2d(out, out.size()[3])
        return self.linear(out.flatten(1))


def _stage(in_planes: int, planes: int, blocks: int, stride: int) -> nn.Sequential:
    layers = [BasicBlock(in_planes, planes, stride)]
    layers += [BasicBlock(planes, planes) for _ in range(blocks - 1)]
    return nn.Sequential(*layers)


def resnet20(num_classes: int = 10) -> nn.Module:
    """ResNet-20: 3 blocks per stage, 0.27M parameters for 10 classes."""
    return CifarResNet(3, num_classes)


def resnet32(num_classes: int = 10) -> nn.Module:
    """ResNet-32: 5 blocks per stage, 0.46M parameters for 10 classes."""
    return CifarResNet(5, num_classes)
