"""Convolutional trunks shared by the localisation network and the part networks.

A trunk maps an image batch ``(B, 3, H, W)`` (normalised with ImageNet mean/std) to its last
feature map ``(B, C, h, w)``; the ST-CNN adds pooling and heads on top. Three trunks:

- ``inception_v3``: torchvision's Inception-v3 up to ``Mixed_7c`` (C=2048, stride 32). The
  closest torchvision model to the paper's BN-Inception; the default for CUB.
- ``resnet50``: torchvision's ResNet-50 up to ``layer4`` (C=2048, stride 32).
- ``small``: a four-stage CNN (C=192, stride 16) for CPU runs, tests and the demo.

Two trunks for the paper's distorted-digit experiment (one-channel 28x28 or 42x42 images),
whose architectures the paper does not fully give ([open]; re-implementations disagree). We
follow the one that matches the paper's parameter budget as recalled, with unpadded ("valid")
convolutions as Caffe-era code had them, and make the widths config keys (``trunk_widths``):

- ``digit_cnn``: conv 9x9-32, ReLU, max-pool 2, conv 7x7-32, ReLU, max-pool 2 (28 px -> 2x2).
- ``digit_fcn``: two fully connected hidden layers of 256 with ReLU on the flattened image.

Both end in a 1x1 "feature map" (the flattened features), so the ST-CNN's global pooling is
the identity for them and its linear classifier is the paper's final FC layer.

Pretrained ImageNet weights come through torchvision's weights API, which looks in
``$TORCH_HOME/hub/checkpoints`` before downloading; a missing file and no network gives one
:class:`~stnrepro.errors.WeightsUnavailableError` line saying where to put the file.
"""

from __future__ import annotations

import copy
import itertools
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

    channels: int  # output channels (digit trunks: the flattened size, see descriptor_size)
    min_input_size: int
    has_pretrained: bool
    in_channels: int = 3
    default_widths: tuple[int, ...] = ()


SPECS: dict[str, BackboneSpec] = {
    # Inception-v3's stem needs >= 75 px (torchvision's own check for the full model).
    "inception_v3": BackboneSpec(channels=2048, min_input_size=75, has_pretrained=True),
    "resnet50": BackboneSpec(channels=2048, min_input_size=32, has_pretrained=True),
    "small": BackboneSpec(channels=192, min_input_size=16, has_pretrained=False),
    # 9x9 valid conv, pool, 7x7 valid conv, pool needs 24 px for a 1x1 output.
    "digit_cnn": BackboneSpec(
        channels=0, min_input_size=24, has_pretrained=False, in_channels=1,
        default_widths=(32, 32),
    ),
    "digit_fcn": BackboneSpec(
        channels=0, min_input_size=1, has_pretrained=False, in_channels=1,
        default_widths=(256, 256),
    ),
}  # fmt: skip
#: The digit localisation network's trunk (the paper's MNIST ST-CNN has its own, small one):
#: conv 5x5-20, ReLU, max-pool 2, conv 5x5-20, ReLU, max-pool 2; its head is FC-20, FC-params.
DIGIT_LOC_WIDTHS: tuple[int, int] = (20, 20)


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
        for cin, cout in itertools.pairwise(widths):
            layers += [_conv_bn_relu(cin, cout), nn.MaxPool2d(2)]
        self.body = nn.Sequential(*layers)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: Tensor) -> Tensor:
        return self.body(x)


class DigitCNNTrunk(nn.Module):
    """conv 9x9, ReLU, pool 2, conv 7x7, ReLU, pool 2 (valid), flattened: (B,1,H,W) -> (B,F,1,1)."""

    def __init__(self, widths: tuple[int, ...] = (32, 32), kernels: tuple[int, ...] = (9, 7)):
        super().__init__()
        layers: list[nn.Module] = []
        cin = 1
        for cout, k in zip(widths, kernels, strict=True):
            layers += [nn.Conv2d(cin, cout, k), nn.ReLU(inplace=True), nn.MaxPool2d(2)]
            cin = cout
        self.body = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        return self.body(x).flatten(1)[:, :, None, None]


class DigitFCNTrunk(nn.Module):
    """Fully connected hidden layers with ReLU on the flattened image: (B,1,H,W) -> (B,F,1,1)."""

    def __init__(self, image_size: int, widths: tuple[int, ...] = (256, 256)) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        fan_in = image_size * image_size
        for width in widths:
            layers += [nn.Linear(fan_in, width), nn.ReLU(inplace=True)]
            fan_in = width
        self.body = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        return self.body(x.flatten(1))[:, :, None, None]


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


def check_widths(name: str, widths: object) -> tuple[int, ...]:
    """model.trunk_widths for ``name``: null = its default; the digit trunks take a list."""
    spec = backbone_spec(name)
    if widths is None:
        return spec.default_widths
    if not spec.default_widths:
        raise ConfigError(
            f"model.trunk_widths={widths!r}: backbone {name} has fixed widths (expected null)"
        )
    if (
        not isinstance(widths, (list, tuple))
        or len(widths) != len(spec.default_widths)
        or not all(isinstance(w, int) and not isinstance(w, bool) and w > 0 for w in widths)
    ):
        raise ConfigError(
            f"model.trunk_widths={widths!r}: expected {len(spec.default_widths)} positive "
            f"integers for backbone {name} (default {list(spec.default_widths)})"
        )
    return tuple(widths)


def build_trunk(
    name: str, pretrained: bool, image_size: int = 224, widths: tuple[int, ...] | None = None
) -> nn.Module:
    """Build one trunk, with ImageNet weights when ``pretrained`` (random init otherwise).

    ``image_size`` and ``widths`` matter to the digit trunks only (the FCN's first layer
    takes the flattened image).
    """
    spec = backbone_spec(name)
    if pretrained and not spec.has_pretrained:
        raise ConfigError(
            f"model.pretrained=true: backbone {name!r} has no ImageNet weights "
            f"(expected model.pretrained=false, or backbone inception_v3/resnet50)"
        )
    if name == "small":
        return SmallTrunk()
    if name == "digit_cnn":
        return DigitCNNTrunk(check_widths(name, widths))
    if name == "digit_fcn":
        return DigitFCNTrunk(image_size, check_widths(name, widths))
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


def build_trunks(
    name: str,
    pretrained: bool,
    count: int,
    image_size: int = 224,
    widths: tuple[int, ...] | None = None,
) -> list[nn.Module]:
    """``count`` trunks with separate parameters that all start from the same weights.

    The paper initialises every part network from the same ImageNet Inception; loading the
    weights once and copying also avoids ``count`` reads of a 100 MB file.
    """
    first = build_trunk(name, pretrained, image_size, widths)
    return [first] + [copy.deepcopy(first) for _ in range(count - 1)]


def build_digit_localisation() -> nn.Module:
    """The digit localisation trunk (:data:`DIGIT_LOC_WIDTHS`): (B,1,H,W) -> (B,20,h,w)."""
    return DigitCNNTrunk(DIGIT_LOC_WIDTHS, kernels=(5, 5)).body


@torch.no_grad()
def output_shape(trunk: nn.Module, image_size: int, in_channels: int = 3) -> tuple[int, ...]:
    """Shape (C, h, w) of the trunk's output for one square ``image_size`` input."""
    was_training = trunk.training
    trunk.eval()  # keep BatchNorm running statistics untouched
    try:
        out = trunk(torch.zeros(1, in_channels, image_size, image_size))
    finally:
        trunk.train(was_training)
    return tuple(int(d) for d in out.shape[1:])


def feature_map_size(trunk: nn.Module, image_size: int, in_channels: int = 3) -> tuple[int, int]:
    """Spatial size (h, w) of the trunk's output for a square ``image_size`` input."""
    shape = output_shape(trunk, image_size, in_channels)
    return shape[-2], shape[-1]
