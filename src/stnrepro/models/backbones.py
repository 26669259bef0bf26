"""Convolutional trunks shared by the localisation network and the part networks.

A trunk maps an image batch ``(B, 3, H, W)`` (normalised with ImageNet mean/std) to its last
feature map ``(B, C, h, w)``; the ST-CNN adds pooling and heads on top. Three trunks:

- ``inception_v3``: torchvision's Inception-v3 up to ``Mixed_7c`` (C=2048, stride 32). The
  closest torchvision model to the paper's BN-Inception; the default for CUB.
- ``resnet50``: torchvision's ResNet-50 up to ``layer4`` (C=2048, stride 32).
- ``small``: a four-stage CNN (C=192, stride 16) for CPU runs, tests and the demo.

Pretrained ImageNet weights come through torchvision's weights API, which looks in
``$TORCH_HOME/hub/checkpoints`` before downloading; a missing file and no network gives one
:class:`~stnrepro.errors.WeightsUnavailableError` line saying where to put the file.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor, nn
from torchvision import models as tvm

from stnrepro.errors import ConfigError, WeightsUnavailableError, one_line
from stnrepro.utils.imagenet import IMAGENET_MEAN, IMAGENET_STD


@dataclass(frozen=True)
class BackboneSpec:
    """What the rest of the model needs to know about a trunk before building it."""

    channels: int
    min_input_size: int
    has_pretrained: bool


SPECS: dict[str, BackboneSpec] = {
    # Inception-v3's stem needs >= 75 px (torchvision's own check for the full model).
    "inception_v3": BackboneSpec(channels=2048, min_input_size=75, has_pretrained=True),
    "resnet50": BackboneSpec(channels=2048, min_input_size=32, has_pretrained=True),
    "small": BackboneSpec(channels=192, min_input_size=16, has_pretrained=False),
}


def backbone_spec(name: str) -> BackboneSpec:
    """Look up a trunk by config name, failing with the list of valid names."""
    if name not in SPECS:
        raise ConfigError(f"model.backbone={name!r}: expected one of {', '.join(SPECS)}")
    return SPECS[name]


class InceptionTrunk(nn.Module):
    """Inception-v3 ``Conv2d_1a_3x3`` ... ``Mixed_7c``: (B,3,H,W) -> (B,2048,~H/32,~W/32)."""

    def __init__(self, net: tvm.Inception3, transform_input: bool) -> None:
        super().__init__()
        # torchvision's ImageNet weights expect inputs normalised to [-1, 1] per channel;
        # ``transform_input`` converts ImageNet mean/std normalisation into that.
        self.transform_input = transform_input
        names = [
            "Conv2d_1a_3x3", "Conv2d_2a_3x3", "Conv2d_2b_3x3", "maxpool1", "Conv2d_3b_1x1",
            "Conv2d_4a_3x3", "maxpool2", "Mixed_5b", "Mixed_5c", "Mixed_5d", "Mixed_6a",
            "Mixed_6b", "Mixed_6c", "Mixed_6d", "Mixed_6e", "Mixed_7a", "Mixed_7b", "Mixed_7c",
        ]  # fmt: skip
        self.body = nn.Sequential(*[getattr(net, n) for n in names])

    def forward(self, x: Tensor) -> Tensor:
        if self.transform_input:
            mean = x.new_tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
            std = x.new_tensor(IMAGENET_STD).view(1, 3, 1, 1)
            x = (x * std + mean - 0.5) / 0.5
        return self.body(x)


class ResNetTrunk(nn.Module):
    """ResNet-50 ``conv1`` ... ``layer4``: (B,3,H,W) -> (B,2048,H/32,W/32)."""

    def __init__(self, net: tvm.ResNet) -> None:
        super().__init__()
        self.body = nn.Sequential(
            net.conv1, net.bn1, net.relu, net.maxpool, net.layer1, net.layer2, net.layer3,
            net.layer4,
        )  # fmt: skip

    def forward(self, x: Tensor) -> Tensor:
        return self.body(x)


def _conv_bn_relu(cin: int, cout: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
    )


class SmallTrunk(nn.Module):
    """A four-stage CNN, (B,3,H,W) -> (B,192,H/16,W/16): cheap enough for CPU training."""

    def __init__(self, widths: tuple[int, ...] = (24, 48, 96, 192)) -> None:
        super().__init__()
        layers: list[nn.Module] = [_conv_bn_relu(3, widths[0], stride=2)]
        for cin, cout in zip(widths[:-1], widths[1:], strict=True):
            layers += [_conv_bn_relu(cin, cout), nn.MaxPool2d(2)]
        self.body = nn.Sequential(*layers)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: Tensor) -> Tensor:
        return self.body(x)


def _weights_enum(name: str) -> tvm.WeightsEnum:
    return {
        "inception_v3": tvm.Inception_V3_Weights.IMAGENET1K_V1,
        "resnet50": tvm.ResNet50_Weights.IMAGENET1K_V2,
    }[name]


def load_imagenet_state_dict(name: str) -> dict[str, Tensor]:
    """Fetch (or read from the torch hub cache) the ImageNet weights of a torchvision model."""
    weights = _weights_enum(name)
    try:
        return weights.get_state_dict(progress=True, check_hash=True)
    except Exception as exc:  # URLError, HTTPError, hash mismatch, corrupt file ...
        cache = Path(torch.hub.get_dir()) / "checkpoints" / Path(weights.url).name
        raise WeightsUnavailableError(
            f"model.pretrained=true: cannot load ImageNet weights for {name} from {weights.url} "
            f"({one_line(exc)}); put the file at {cache} or set model.pretrained=false"
        ) from exc


def build_trunk(name: str, pretrained: bool) -> nn.Module:
    """Build one trunk, with ImageNet weights when ``pretrained`` (random init otherwise)."""
    spec = backbone_spec(name)
    if pretrained and not spec.has_pretrained:
        raise ConfigError(
            f"model.pretrained=true: backbone {name!r} has no ImageNet weights "
            f"(expected model.pretrained=false, or backbone inception_v3/resnet50)"
        )
    if name == "small":
        return SmallTrunk()
    if name == "inception_v3":
        # aux_logits must match the checkpoint's keys; the aux head is dropped by the trunk.
        net = tvm.inception_v3(weights=None, aux_logits=True, init_weights=not pretrained)
        if pretrained:
            net.load_state_dict(load_imagenet_state_dict(name))
        return InceptionTrunk(net, transform_input=pretrained)
    net = tvm.resnet50(weights=None)
    if pretrained:
        net.load_state_dict(load_imagenet_state_dict(name))
    return ResNetTrunk(net)


def build_trunks(name: str, pretrained: bool, count: int) -> list[nn.Module]:
    """``count`` trunks with separate parameters that all start from the same weights.

    The paper initialises every part network from the same ImageNet Inception; loading the
    weights once and copying also avoids ``count`` reads of a 100 MB file.
    """
    first = build_trunk(name, pretrained)
    return [first] + [copy.deepcopy(first) for _ in range(count - 1)]


@torch.no_grad()
def feature_map_size(trunk: nn.Module, image_size: int) -> tuple[int, int]:
    """Spatial size (h, w) of the trunk's output for a square ``image_size`` input."""
    was_training = trunk.training
    trunk.eval()  # keep BatchNorm running statistics untouched
    try:
        out = trunk(torch.zeros(1, 3, image_size, image_size))
    finally:
        trunk.train(was_training)
    return int(out.shape[-2]), int(out.shape[-1])
