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


def timm_resnet18_features() -> nn.Module:
    """timm's ResNet-18 as a backbone: a list of its five feature maps (strides 2 to 32)."""
    import timm

    return timm.create_model("resnet18", features_only=True, pretrained=False)


def timm_mobilenetv3_features() -> nn.Module:
    """timm's MobileNetV3-Large as a detection backbone: its feature maps at strides 8, 16 and 32."""
    import timm

    return timm.create_model("mobilenetv3_large_100", features_only=True, pretrained=False, out_indices=(2, 3, 4))


class ConvBNAct(nn.Sequential):
    def __init__(self, cin: int, cout: int, kernel: int = 3, stride: int = 1) -> None:
        super().__init__(nn.Conv2d(cin, cout, kernel, stride, kernel // 2, bias=False), nn.BatchNorm2d(cout),
                         nn.SiLU())


class CSP(nn.Module):
    """Cross-stage partial block: half the channels through residual bottlenecks, concatenated with the
    other half and fused."""

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        hidden = cout // 2
        self.main, self.bypass = ConvBNAct(cin, hidden, 1), ConvBNAct(cin, hidden, 1)
        self.inner = nn.Sequential(ConvBNAct(hidden, hidden, 1), ConvBNAct(hidden, hidden, 3))
        self.fuse = ConvBNAct(2 * hidden, cout, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.main(x)
        return self.fuse(torch.cat([y + self.inner(y), self.bypass(x)], 1))


class TinyYolo(nn.Module):
    """YOLOv5/v8-style detector, architecture only: a CSP backbone (P3, P4, P5 at strides 8, 16, 32), an
    FPN top-down path that concatenates upsampled deep features with shallower ones, a PAN bottom-up path,
    and three detection heads: a tuple of (N, anchors × (5 + classes), H, W) per scale."""

    def __init__(self, classes: int = 4, anchors: int = 3, width: int = 16) -> None:
        super().__init__()
        w = width
        self.stem = ConvBNAct(3, w, 3, 2)
        self.stage1 = nn.Sequential(ConvBNAct(w, 2 * w, 3, 2), CSP(2 * w, 2 * w))
        self.stage2 = nn.Sequential(ConvBNAct(2 * w, 4 * w, 3, 2), CSP(4 * w, 4 * w))  # P3
        self.stage3 = nn.Sequential(ConvBNAct(4 * w, 8 * w, 3, 2), CSP(8 * w, 8 * w))  # P4
        self.stage4 = nn.Sequential(ConvBNAct(8 * w, 16 * w, 3, 2), CSP(16 * w, 16 * w))  # P5
        self.up = nn.Upsample(scale_factor=2, mode="nearest")
        self.top4, self.top3 = CSP(24 * w, 8 * w), CSP(12 * w, 4 * w)
        self.down3, self.bottom4 = ConvBNAct(4 * w, 4 * w, 3, 2), CSP(12 * w, 8 * w)
        self.down4, self.bottom5 = ConvBNAct(8 * w, 8 * w, 3, 2), CSP(24 * w, 16 * w)
        self.heads = nn.ModuleList(nn.Conv2d(c, anchors * (5 + classes), 1) for c in (4 * w, 8 * w, 16 * w))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        p3 = self.stage2(self.stage1(self.stem(x)))
        p4 = self.stage3(p3)
        p5 = self.stage4(p4)
        t4 = self.top4(torch.cat([self.up(p5), p4], 1))
        n3 = self.top3(torch.cat([self.up(t4), p3], 1))
        n4 = self.bottom4(torch.cat([self.down3(n3), t4], 1))
        n5 = self.bottom5(torch.cat([self.down4(n4), p5], 1))
        return tuple(head(features) for head, features in zip(self.heads, (n3, n4, n5)))


def tiny_yolo() -> nn.Module:
    return TinyYolo()
