"""Small models with hand-computed cuts, also importable as ``toy_models:FACTORY`` model specs."""

import torch
from torch import nn


class Toy(nn.Module):
    """3x8x8 input (192 elements); a residual block and a ``view(bs, -1)`` like EfficientNet-Lite's."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 4, 3, stride=2, padding=1)  # 4x4x4 = 64 elements
        self.relu = nn.ReLU()
        self.conv2 = nn.Conv2d(4, 4, 3, padding=1)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(4, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        bs = x.size(0)
        y = self.relu(self.conv1(x))
        z = self.conv2(y) + y
        return self.fc(self.pool(z).view(bs, -1))


class Tokens(nn.Module):
    """A class token (parameter-only value) prepended to patch tokens, as in ViT."""

    def __init__(self) -> None:
        super().__init__()
        self.patch = nn.Conv2d(3, 2, 4, stride=4)  # 3x8x8 -> 2x2x2
        self.token = nn.Parameter(torch.randn(1, 1, 2))
        self.head = nn.Linear(2, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        t = self.patch(x).flatten(2).transpose(1, 2)
        t = torch.cat([self.token.expand(t.size(0), -1, -1), t], dim=1)
        return self.head(t.mean(1))


class ShapeBranch(nn.Module):
    """Python control flow on a shape: torch.fx cannot trace it, torch.export can."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, stride=2, padding=1)
        self.fc = nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-1] > 4:
            x = self.conv(x)
        return self.fc(x.mean((2, 3)))


class Upsample(nn.Module):
    """Resizes its output to the input's size, as segmentation heads do: ``x.shape`` is read at the end."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 2, 3, stride=2, padding=1)  # 3x8x8 -> 2x4x4

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x)
        return nn.functional.interpolate(y, size=x.shape[-2:], mode="bilinear", align_corners=False)


class DataDependent(nn.Module):
    """Control flow on tensor values: neither torch.fx nor torch.export can trace it."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.sum() > 0:
            return x * 2
        return x


def toy() -> nn.Module:
    return Toy()


def untraceable() -> nn.Module:
    return nn.Sequential(nn.Conv2d(3, 4, 3), DataDependent())


def not_a_module() -> str:
    return "not a module"
