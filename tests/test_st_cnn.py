"""STCNN shapes, construction from the same weights, parameter groups and weight loading."""

import functools
from pathlib import Path

import pytest
import torch
from torchvision import models as tvm

from stnrepro.errors import ConfigError, WeightsUnavailableError
from stnrepro.lightning.module import STCNNModule
from stnrepro.models.backbones import build_trunk
from stnrepro.models.st_cnn import STCNN


@pytest.mark.parametrize("n", [0, 2, 4])
@pytest.mark.parametrize("image_size", [224, 448])
def test_output_shapes_small_backbone(n, image_size):
    model = STCNN(7, "small", num_transformers=n, image_size=image_size, crop_size=224).eval()
    out = model(torch.randn(2, 3, image_size, image_size))
    assert out.logits.shape == (2, 7)
    if n == 0:
        assert out.theta is None
    else:
        assert out.theta.shape == (2, n, 2, 3)
        assert [c.shape[-1] for c in model.crops(torch.randn(1, 3, image_size, image_size))] == [
            224
        ] * n
    assert model.classifier.in_features == 192 * max(1, n)


@pytest.mark.parametrize("backbone", ["inception_v3", "resnet50"])
def test_one_forward_of_the_torchvision_backbones(backbone):
    model = STCNN(5, backbone, num_transformers=2, image_size=448, crop_size=224).eval()
    with torch.no_grad():
        out = model(torch.randn(1, 3, 448, 448))
    assert out.logits.shape == (1, 5) and out.theta.shape == (1, 2, 2, 3)
    assert model.classifier.in_features == 2048 * 2


def test_transformers_start_at_distinct_positions_and_parts_share_init():
    model = STCNN(3, "small", num_transformers=4, image_size=64, crop_size=32).eval()
    theta = model.localise(torch.randn(2, 3, 64, 64))
    centres = {(round(t[0, 2].item(), 4), round(t[1, 2].item(), 4)) for t in theta[0]}
    assert len(centres) == 4
    first = model.parts[0].state_dict()
    for part in [*list(model.parts[1:]), model.loc_trunk]:
        for k, v in part.state_dict().items():
            assert torch.equal(v, first[k])
        assert part.body[0][0].weight.data_ptr() != model.parts[0].body[0][0].weight.data_ptr()


def _module(**kw):
    opt = functools.partial(torch.optim.SGD, lr=0.1, momentum=0.9)
    return STCNNModule(num_classes=4, optimizer=opt, image_size=64, crop_size=32, **kw)


def test_param_groups_carry_configured_lrs():
    module = _module(num_transformers=2, loc_lr_mult=1e-4, head_lr_mult=10.0)
    opt = module.configure_optimizers()
    lrs = {g["name"]: g["lr"] for g in opt.param_groups}
    assert lrs == pytest.approx({"parts": 0.1, "classifier": 1.0, "localisation": 1e-5})
    counted = sum(p.numel() for g in opt.param_groups for p in g["params"])
    assert counted == sum(p.numel() for p in module.parameters())
    loc = {id(p) for p in opt.param_groups[2]["params"]}
    assert all(id(p) in loc for p in module.net.transformer.parameters())
    assert all(id(p) in loc for p in module.net.loc_trunk.parameters())


def test_cnn_has_no_localisation_group():
    opt = _module(num_transformers=0).configure_optimizers()
    assert [g["name"] for g in opt.param_groups] == ["parts", "classifier"]


@pytest.mark.parametrize(
    "kwargs,key",
    [
        ({"backbone": "vgg"}, "model.backbone='vgg'"),
        ({"num_transformers": -1}, "model.num_transformers=-1"),
        ({"fixed_scale": 1.5}, "model.fixed_scale=1.5"),
        ({"fixed_scale": 0.0}, "model.fixed_scale=0.0"),
        ({"transform": "spline"}, "model.transform='spline'"),
        ({"num_transformers": 2, "crop_size": 128, "image_size": 64}, "model.crop_size=128"),
        ({"backbone": "inception_v3", "image_size": 64}, "data.image_size=64"),
        ({"backbone": "small", "pretrained": True}, "model.pretrained=true"),
    ],
)
def test_bad_model_settings_are_refused_with_the_key(kwargs, key):
    args = {"num_classes": 3, "image_size": 64, "crop_size": 32} | kwargs
    with pytest.raises(ConfigError, match=key.replace("(", r"\(").replace(".", r"\.")) as info:
        STCNN(**args)
    assert "\n" not in str(info.value)


def test_pretrained_weights_load_from_the_torch_hub_cache(tmp_path, monkeypatch):
    """The real weights path, fed by a local file instead of the network."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    reference = tvm.resnet50(weights=None)
    torch.nn.init.constant_(reference.layer4[2].conv3.weight, 0.123)
    url = tvm.ResNet50_Weights.IMAGENET1K_V2.url
    target = Path(tmp_path) / "hub" / "checkpoints" / Path(url).name
    target.parent.mkdir(parents=True)
    torch.save(reference.state_dict(), target)
    trunk = build_trunk("resnet50", pretrained=True)
    assert torch.equal(trunk.body[7][2].conv3.weight, reference.layer4[2].conv3.weight)


def test_missing_weights_give_one_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))

    def offline(*args, **kwargs):
        raise OSError("<urlopen error [Errno -3] Temporary failure in name resolution>")

    monkeypatch.setattr(torch.hub, "download_url_to_file", offline)
    with pytest.raises(WeightsUnavailableError) as info:
        build_trunk("inception_v3", pretrained=True)
    message = str(info.value)
    assert "inception_v3_google-0cc3c7bd.pth" in message and "model.pretrained=false" in message
    assert "\n" not in message
