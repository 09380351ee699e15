"""SISTCM: the super-image spatio-temporal convolutional model of Wei et al. (ESWA 2024).

A ResNet run on every frame as a 2D image, except that each basic block's second 3x3 convolution
sees two "super images" built from the K frames of a clip (Wei et al. 2024). Also the plain 2D
ResNet of the paper's "ResNet + TLSTM" baseline. Weight names follow torchvision's ``resnet18`` /
``resnet34`` so ImageNet weights load by name (:func:`load_imagenet_weights`).

Inputs are videos ``(B, C, K, 3, S, S)`` (uint8, or float in [0, 1]); outputs are clip features
``(B*C, 512)``. K is read from the input at call time and passed to every block, so one model runs
any clip length.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.autograd.function import once_differentiable

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def _conv3x3(in_planes: int, planes: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)


def _downsample(in_planes: int, planes: int, stride: int) -> nn.Sequential | None:
    """torchvision's 1x1/stride projection shortcut (``downsample.0`` conv, ``downsample.1`` BN)."""
    if stride == 1 and in_planes == planes:
        return None
    return nn.Sequential(
        nn.Conv2d(in_planes, planes, 1, stride=stride, bias=False), nn.BatchNorm2d(planes)
    )


class BasicBlock(nn.Module):
    """torchvision's ResNet basic block, per frame; ``frames`` is accepted and ignored."""

    def __init__(self, in_planes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = _conv3x3(in_planes, planes, stride)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = _conv3x3(planes, planes)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = _downsample(in_planes, planes, stride)

    def forward(self, x: Tensor, frames: int) -> Tensor:
        shortcut = x if self.downsample is None else self.downsample(x)
        y = F.relu(self.bn1(self.conv1(x)), inplace=True)
        y = self.bn2(self.conv2(y))
        return F.relu(y + shortcut, inplace=True)


def _frames_from_super_images(a: Tensor, b: Tensor) -> Tensor:
    """Inverse layouts of A ``(BC, W, H, K, Ch)`` and B ``(BC, H, W, K, Ch)``, summed in one pass.

    Returns the frame layout ``(BC, K, H, W, Ch)``, contiguous.
    """
    bc, w, h, k, ch = a.shape
    out = a.new_empty(bc, k, h, w, ch)  # (BC, K, H, W, Ch)
    # A (BC, W, H, K, Ch) -> (BC, K, H, W, Ch); B (BC, H, W, K, Ch) -> (BC, K, H, W, Ch)
    return torch.add(a.permute(0, 3, 2, 1, 4), b.permute(0, 3, 1, 2, 4), out=out)


class _ToSuperImages(torch.autograd.Function):
    """Frames ``(BC, K, S, S, Ch)`` -> super images A then B stacked: ``(2BC, S, S, K, Ch)``.

    Channels-last order (rows, cols, K, Ch), so ``.flatten(2, 3)`` gives the super images with
    exact channels_last strides. Written as a Function so that the backward pass is one fused
    gather-add into a dense frame-layout gradient instead of strided slices and zero-fills.
    """

    @staticmethod
    def forward(ctx, y: Tensor) -> Tensor:
        bc, k, h, w, ch = y.shape
        out = y.new_empty(2 * bc, h, w, k, ch)  # (2BC, S, S, K, Ch)
        out[:bc].copy_(y.permute(0, 3, 2, 1, 4))  # A: (BC, W, H, K, Ch)
        out[bc:].copy_(y.permute(0, 2, 3, 1, 4))  # B: (BC, H, W, K, Ch)
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx, grad: Tensor) -> Tensor:
        bc = grad.shape[0] // 2
        return _frames_from_super_images(grad[:bc], grad[bc:])  # (BC, K, S, S, Ch)


class _FromSuperImages(torch.autograd.Function):
    """A ``(BC, W, H, K, Ch)`` and B ``(BC, H, W, K, Ch)`` -> their sum in frame layout.

    The backward pass hands each input a dense gradient in its own (channels-last) layout.
    """

    @staticmethod
    def forward(ctx, a: Tensor, b: Tensor) -> Tensor:
        return _frames_from_super_images(a, b)  # (BC, K, H, W, Ch)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad: Tensor) -> tuple[Tensor, Tensor]:
        grad_a = grad.permute(0, 3, 2, 1, 4).contiguous()  # (BC, W, H, K, Ch)
        grad_b = grad.permute(0, 2, 3, 1, 4).contiguous()  # (BC, H, W, K, Ch)
        return grad_a, grad_b


class SuperImageBlock(nn.Module):
    """The SISTCM basic block: conv2/bn2 applied to the two super images of each clip.

    ``forward(x, frames)`` takes per-frame maps ``x: (B*C*K, Cin, H, W)`` ordered clip-major (the
    K frames of a clip are consecutive) and ``frames = K``. conv1/bn1 run per frame with the
    block's stride; the K frames of each clip are laid out as super image A ``(Ch, W, H*K)`` and
    super image B ``(Ch, H, W*K)`` (K fastest along the columns), both go through the same
    conv2/bn2/ReLU, are mapped back, and ``out = relu(a + b + shortcut(x))``.

    When H == W (always, for square inputs) both super images have the same shape and conv2 runs
    once on their concatenation along the batch; bn2 is still applied to A and B separately, as in
    the reference (separate batch statistics and two running-stat updates in training mode).
    Super images are stored channels-last; building them and mapping them back are one copy each
    way, forward and backward. Non-square maps take a plain (slower) reshape path.
    """

    def __init__(self, in_planes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = _conv3x3(in_planes, planes, stride)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = _conv3x3(planes, planes)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = _downsample(in_planes, planes, stride)

    def _head(self, z: Tensor) -> Tensor:
        return F.relu(self.bn2(self.conv2(z)), inplace=True)

    def _square(self, y: Tensor, k: int) -> Tensor:
        n, ch, s, _ = y.shape
        bc = n // k
        y5 = y.permute(0, 2, 3, 1).unflatten(0, (bc, k))  # (BC, K, S, S, Ch)
        ab = _ToSuperImages.apply(y5)  # (2BC, S, S, K, Ch): A then B
        z = self.conv2(ab.flatten(2, 3).permute(0, 3, 1, 2))  # (2BC, Ch, S, S*K), channels-last
        za, zb = z.split(bc)  # (BC, Ch, W, H*K), (BC, Ch, H, W*K)
        za = F.relu(self.bn2(za), inplace=True)
        zb = F.relu(self.bn2(zb), inplace=True)
        a = za.permute(0, 2, 3, 1).unflatten(2, (s, k))  # (BC, W, H, K, Ch)
        b = zb.permute(0, 2, 3, 1).unflatten(2, (s, k))  # (BC, H, W, K, Ch)
        out = _FromSuperImages.apply(a, b)  # (BC, K, H, W, Ch)
        return out.flatten(0, 1).permute(0, 3, 1, 2)  # (BC*K, Ch, H, W), channels-last

    def _general(self, y: Tensor, k: int) -> Tensor:
        n, ch, h, w = y.shape
        bc = n // k
        y5 = y.unflatten(0, (bc, k))  # (BC, K, Ch, H, W)
        cl3d = torch.channels_last_3d
        a5 = y5.permute(0, 2, 4, 3, 1).contiguous(memory_format=cl3d)  # (BC, Ch, W, H, K)
        b5 = y5.permute(0, 2, 3, 4, 1).contiguous(memory_format=cl3d)  # (BC, Ch, H, W, K)
        za = self._head(a5.flatten(3))  # (BC, Ch, W, H*K)
        zb = self._head(b5.flatten(3))  # (BC, Ch, H, W*K)
        za = za.unflatten(3, (h, k)).permute(0, 4, 1, 3, 2)  # (BC, K, Ch, H, W)
        zb = zb.unflatten(3, (w, k)).permute(0, 4, 1, 2, 3)  # (BC, K, Ch, H, W)
        return (za + zb).flatten(0, 1)  # (BC*K, Ch, H, W)

    def forward(self, x: Tensor, frames: int) -> Tensor:
        shortcut = x if self.downsample is None else self.downsample(x)
        y = F.relu(self.bn1(self.conv1(x)), inplace=True)  # (BC*K, Ch, H, W)
        n, _, h, w = y.shape
        if frames < 1 or n % frames:
            raise ValueError(f"{n} frames are not a whole number of clips of K = {frames}")
        ab = self._square(y, frames) if h == w else self._general(y, frames)
        return F.relu(ab + shortcut, inplace=True)  # (BC*K, Ch, H, W)


class FrameResNet(nn.Module):
    """A torchvision-named ResNet over the frames of clips, pooled to one feature per clip.

    With ``block=SuperImageBlock`` this is the SISTCM backbone; with ``block=BasicBlock`` it is
    the plain 2D ResNet of the baseline, whose clip feature is the average of its frames'.
    ``forward(x)`` takes ``(B, C, K, 3, S, S)`` (uint8 is scaled by 1/255 on its own device;
    float is taken to be in [0, 1]) and returns ``(B*C, 512)``: the layer-4 maps averaged over
    (K, h, w). ``normalize=True`` subtracts the ImageNet mean / divides by its std (the reference
    does not: default off). ``channels_last`` runs the convolutions in NHWC (faster on CPU and GPU).
    """

    def __init__(
        self,
        block: type[BasicBlock] | type[SuperImageBlock],
        layers: tuple[int, int, int, int],
        normalize: bool = False,
        channels_last: bool = True,
    ) -> None:
        super().__init__()
        self.normalize = normalize
        self.channels_last = channels_last
        # Non-persistent: the state dict keeps exactly torchvision's key names.
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), False)
        self.conv1 = nn.Conv2d(3, 64, 7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
        in_planes = 64
        for i, (planes, count) in enumerate(zip((64, 128, 256, 512), layers, strict=True)):
            stride = 1 if i == 0 else 2
            blocks = []
            for j in range(count):
                blocks.append(block(in_planes, planes, stride if j == 0 else 1))
                in_planes = planes
            self.add_module(f"layer{i + 1}", nn.ModuleList(blocks))
        self.num_features = in_planes
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def blocks(self) -> list[nn.Module]:
        """All residual blocks in order (layer1.0, layer1.1, ..., layer4.N)."""
        return [b for name in ("layer1", "layer2", "layer3", "layer4") for b in getattr(self, name)]

    def prepare(self, x: Tensor) -> Tensor:
        """``(B, C, K, 3, S, S)`` uint8 or float -> float frames ``(B*C*K, 3, S, S)``."""
        if x.dim() != 6 or x.shape[3] != 3:
            raise ValueError(f"expected (B, C, K, 3, S, S), got {tuple(x.shape)}")
        frames = x.flatten(0, 2)  # (B*C*K, 3, S, S)
        if frames.dtype == torch.uint8:
            frames = frames.float().div_(255.0)
        elif not frames.is_floating_point():
            raise ValueError(f"expected uint8 or float frames, got {frames.dtype}")
        if self.normalize:
            frames = (frames - self.mean) / self.std
        if self.channels_last:
            frames = frames.contiguous(memory_format=torch.channels_last)
        return frames

    def forward(self, x: Tensor) -> Tensor:
        k = x.shape[2]
        y = self.prepare(x)  # (B*C*K, 3, S, S)
        y = self.maxpool(F.relu(self.bn1(self.conv1(y)), inplace=True))  # (B*C*K, 64, S/4, S/4)
        for blk in self.blocks():
            y = blk(y, k)  # (B*C*K, Ch, h, w)
        return y.unflatten(0, (-1, k)).mean(dim=(1, 3, 4))  # (B*C, 512)


def _frame_resnet(super_image: bool, depth: int, **kwargs) -> FrameResNet:
    layers = {18: (2, 2, 2, 2), 34: (3, 4, 6, 3)}
    if depth not in layers:
        raise ValueError(f"depth must be 18 or 34, got {depth}")
    block = SuperImageBlock if super_image else BasicBlock
    return FrameResNet(block, layers[depth], **kwargs)


def sistcm_resnet18(**kwargs) -> FrameResNet:
    """SISTCM backbone on ResNet-18 (Wei et al., ESWA 2024, §SISTCM); torchvision names."""
    return _frame_resnet(True, 18, **kwargs)


def sistcm_resnet34(**kwargs) -> FrameResNet:
    """SISTCM backbone on ResNet-34 ([3, 4, 6, 3]); loads torchvision ``resnet34`` weights."""
    return _frame_resnet(True, 34, **kwargs)


def resnet18_frames(**kwargs) -> FrameResNet:
    """Plain 2D ResNet-18 per frame, frames of a clip averaged (the paper's ResNet baseline)."""
    return _frame_resnet(False, 18, **kwargs)


def resnet34_frames(**kwargs) -> FrameResNet:
    """Plain 2D ResNet-34 per frame, frames of a clip averaged."""
    return _frame_resnet(False, 34, **kwargs)


def load_imagenet_weights(model_or_backbone: nn.Module, path: str | Path) -> nn.Module:
    """Load a torchvision ResNet state dict (``resnet18-f37072fd.pth``) into a backbone by name.

    Accepts a :class:`FrameResNet` or any module with a ``backbone`` attribute (the facial
    models). ``fc.*`` keys are skipped; every other key must exist with the same shape, and every
    backbone key must be present, otherwise ``ValueError`` names the file and lists the keys.
    ``*.num_batches_tracked`` may be absent (torchvision's published ImageNet files predate it:
    102 keys); absent counters keep the backbone's values. Returns the backbone.
    """
    backbone = getattr(model_or_backbone, "backbone", model_or_backbone)
    state = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(state, dict):
        raise ValueError(f"{path}: expected a state dict, got {type(state).__name__}")
    state = {k: v for k, v in state.items() if not k.startswith("fc.")}
    own = backbone.state_dict()
    optional = {k: v for k, v in own.items() if k.endswith("num_batches_tracked")}
    state = {**optional, **state}  # the file's counters win where present
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    mismatched = sorted(
        f"{k}: file {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
        for k in set(own) & set(state)
        if tuple(state[k].shape) != tuple(own[k].shape)
    )
    if missing or unexpected or mismatched:
        problems = [
            f"{label}: {', '.join(keys)}"
            for label, keys in (
                ("missing keys", missing),
                ("unexpected keys", unexpected),
                ("shape mismatches", mismatched),
            )
            if keys
        ]
        raise ValueError(f"{path} does not match the backbone; " + "; ".join(problems))
    backbone.load_state_dict(state, strict=True)
    return backbone
