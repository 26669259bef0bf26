"""The distorted-digit models: FCN / CNN trunks, the digit localisation net, and the affine,
projective and thin-plate-spline transformers that start at the identity.

Exactness checks run in float64: an identity warp reproduces the input, a thin-plate spline
sends each control point exactly to its target, and a 90 degree rotation set by hand gives
``torch.rot90`` of the image for every transform (pixel centres map onto pixel centres).
"""

from __future__ import annotations

import math

import pytest
import torch

from stnrepro.config import compose_config
from stnrepro.errors import ConfigError
from stnrepro.models.samplers import check_sampler
from stnrepro.models.spatial_transformer import SpatialTransformer, check_transform
from stnrepro.models.st_cnn import STCNN
from stnrepro.utils.warps import (
    homography_from_points,
    homography_grid,
    pixel_centres,
    tps_control_points,
    tps_matrix,
)

WARPS = ("affine", "projective", "tps")
ROT90 = torch.tensor([[0.0, -1.0], [1.0, 0.0]], dtype=torch.float64)  # output -> input


def digit_st(transform: str, size: int = 28, backbone: str = "digit_cnn") -> STCNN:
    torch.manual_seed(0)
    return STCNN(
        10, backbone=backbone, num_transformers=1, image_size=size, crop_size=size,
        transform=transform, localisation="digit", warp_bound=2.0, loc_hidden=20, dropout=0.0,
    ).double()  # fmt: skip


def hand_warp(transform: str, linear: torch.Tensor, st: SpatialTransformer) -> torch.Tensor:
    """The warp (1, 1, ...) of the linear map ``linear`` (2x2) in each transform's terms."""
    if transform == "affine":
        return torch.cat([linear, torch.zeros(2, 1, dtype=linear.dtype)], 1)[None, None]
    if transform == "projective":
        h = torch.eye(3, dtype=linear.dtype)
        h[:2, :2] = linear
        return h[None, None]
    return (st.control.double() @ linear.T)[None, None]  # rotated control points


@pytest.mark.parametrize("transform", WARPS)
@pytest.mark.parametrize("size", [28, 42])
def test_identity_start_reproduces_the_input_exactly(transform, size):
    model = digit_st(transform, size)
    image = torch.rand(3, 1, size, size, dtype=torch.float64)
    out = model(image)
    assert out.theta.shape == (3, 1, 2, 3)
    torch.testing.assert_close(out.theta[0, 0], torch.eye(2, 3, dtype=torch.float64))
    (crop,) = model.crops(image)
    assert (crop - image).abs().max().item() < 1e-12


@pytest.mark.parametrize("transform", WARPS)
def test_a_90_degree_rotation_set_by_hand_is_rot90(transform):
    model = digit_st(transform)
    image = torch.rand(2, 1, 28, 28, dtype=torch.float64)
    warp = hand_warp(transform, ROT90, model.transformer).expand(2, -1, *([-1] * 2))
    (crop,) = model.crops(image, warp)
    # Output (x, y) samples input (-y, x): a quarter turn of the image.
    expected = torch.rot90(image, k=1, dims=(-2, -1))  # out[i, j] = in[j, S-1-i]
    assert (crop - expected).abs().max().item() < 1e-10
    torch.testing.assert_close(
        model.transformer.affine_view(warp)[0, 0, :, :2], ROT90, rtol=0, atol=1e-10
    )


def test_tps_maps_each_control_point_exactly_to_its_target():
    control = tps_control_points(4)
    torch.manual_seed(1)
    targets = control + 0.3 * torch.randn_like(control)
    mapped = tps_matrix(control, control) @ targets
    assert (mapped - targets).abs().max().item() < 1e-12
    # ... and through the model's own decode: targets = control + bound tanh(raw)
    st = digit_st("tps").transformer
    raw = torch.randn(1, 1, st.num_params, dtype=torch.float64)
    warp = st.decode(raw)
    assert (warp - st.control).abs().max().item() <= 2.0
    assert (tps_matrix(st.control, st.control) @ warp[0, 0] - warp[0, 0]).abs().max() < 1e-12


def test_homography_through_four_points_and_its_grid():
    src = torch.tensor([[-1.0, -1.0], [1.0, -1.0], [1.0, 1.0], [-1.0, 1.0]], dtype=torch.float64)
    dst = src * 0.5 + torch.tensor([[0.1, 0.0], [0.0, 0.2], [-0.1, 0.1], [0.05, -0.1]])
    h = homography_from_points(src[None], dst[None])[0]
    homog = torch.cat([src, torch.ones(4, 1, dtype=src.dtype)], 1) @ h.T
    torch.testing.assert_close(homog[:, :2] / homog[:, 2:], dst, rtol=0, atol=1e-12)
    # An affine homography gives F.affine_grid's grid (align_corners=False).
    theta = torch.tensor([[[0.8, 0.1, 0.2], [-0.1, 0.9, -0.3]]], dtype=torch.float64)
    affine = torch.cat([theta, torch.tensor([[[0.0, 0.0, 1.0]]], dtype=torch.float64)], 1)
    reference = torch.nn.functional.affine_grid(theta, [1, 1, 5, 5], align_corners=False)
    torch.testing.assert_close(homography_grid(affine, 5), reference, rtol=0, atol=1e-12)
    assert pixel_centres(2).tolist() == [[-0.5, -0.5], [0.5, -0.5], [-0.5, 0.5], [0.5, 0.5]]


@pytest.mark.parametrize("transform", WARPS)
def test_warps_are_bounded_and_outlined(transform):
    st = digit_st(transform).transformer
    raw = torch.full((1, 1, st.num_params), 50.0, dtype=torch.float64)  # tanh saturates
    warp = st.decode(raw)
    assert torch.isfinite(warp).all()
    if transform == "affine":
        assert (warp - torch.eye(2, 3, dtype=warp.dtype)).abs().max() <= 2.0
    outline = st.outline(st.decode(torch.zeros_like(raw)))
    # The identity's outline is the image border, whatever the polygon's resolution.
    assert outline.abs().amax(-1).sub(1).abs().max() < 1e-12


def test_localisation_nets_and_parameter_counts():
    digit = digit_st("affine")
    assert digit.loc_trunk is not None and len(digit.parts) == 1
    # the digit localisation net: conv5-20, pool, conv5-20, pool (28 px -> 4x4), fc-20, fc-6
    assert digit.transformer.fc1.in_features == 20 * 4 * 4
    assert digit.transformer.fc2.out_features == 6
    assert digit.transformer.fc1.out_features == 20
    shared = STCNN(
        10, backbone="digit_cnn", num_transformers=1, image_size=28, crop_size=28,
        transform="affine", localisation="shared", warp_bound=1.0, dropout=0.0,
    )  # fmt: skip
    # a shared localisation is a second copy of the backbone with its 1x1-conv head
    assert sum(p.numel() for p in shared.loc_trunk.parameters()) == sum(
        p.numel() for p in shared.parts[0].parameters()
    )
    assert isinstance(shared.transformer.conv, torch.nn.Conv2d)
    assert shared.transformer.conv.in_channels == 128  # the trunk's flattened 32 x 2 x 2
    cnn = STCNN(10, backbone="digit_cnn", image_size=28, crop_size=28, dropout=0.0)
    fcn = STCNN(10, backbone="digit_fcn", image_size=42, crop_size=42, dropout=0.0)
    # 28 -> conv9 20 -> pool 10 -> conv7 4 -> pool 2: 32 x 2 x 2 = 128 features -> FC-10
    assert cnn.classifier.in_features == 128
    assert fcn.classifier.in_features == 256
    assert fcn.parts[0].body[0].in_features == 42 * 42
    assert cnn(torch.randn(2, 1, 28, 28)).logits.shape == (2, 10)


def test_bad_digit_model_settings_give_one_line_naming_the_key():
    with pytest.raises(ConfigError, match=r"model.transform=projective: needs model.warp_bound"):
        check_transform("projective", None, 4)
    with pytest.raises(ConfigError, match=r"model.warp_bound=-1: expected a float > 0 or null"):
        check_transform("affine", -1, 4)
    with pytest.raises(ConfigError, match=r"model.warp_bound: applies to affine"):
        check_transform("attention", 1.0, 4)
    with pytest.raises(ConfigError, match=r"model.tps_grid=1: expected an integer >= 2"):
        check_transform("tps", 1.0, 1)
    with pytest.raises(ConfigError, match=r"model.sampler=analytic: model.transform=tps"):
        check_sampler("analytic", "tps")
    with pytest.raises(ConfigError, match=r"model.trunk_widths=\[32\]: expected 2 positive"):
        STCNN(10, backbone="digit_cnn", image_size=28, crop_size=28, trunk_widths=[32])
    with pytest.raises(ConfigError, match=r"model.trunk_widths=\[8, 8\]: backbone small"):
        STCNN(10, backbone="small", image_size=64, crop_size=64, trunk_widths=[8, 8])
    with pytest.raises(ConfigError, match=r"model.localisation='own': expected one of"):
        STCNN(10, backbone="digit_cnn", image_size=28, crop_size=28, localisation="own")
    with pytest.raises(ConfigError, match=r"data.image_size=20: backbone digit_cnn needs"):
        STCNN(10, backbone="digit_cnn", image_size=20, crop_size=20)


def test_widths_are_config_keys():
    model = STCNN(10, backbone="digit_cnn", image_size=28, crop_size=28, trunk_widths=[8, 16])
    convs = [m for m in model.parts[0].modules() if isinstance(m, torch.nn.Conv2d)]
    assert [c.out_channels for c in convs] == [8, 16]
    assert model.classifier.in_features == 16 * 2 * 2


@pytest.mark.parametrize(
    "option, label",
    [
        ("cnn", (0, "digit_cnn")),
        ("fcn", (0, "digit_fcn")),
        ("st_cnn_aff", (1, "digit_cnn", "affine")),
        ("st_cnn_proj", (1, "digit_cnn", "projective")),
        ("st_cnn_tps", (1, "digit_cnn", "tps")),
        ("st_fcn_aff", (1, "digit_fcn", "affine")),
        ("st_fcn_proj", (1, "digit_fcn", "projective")),
        ("st_fcn_tps", (1, "digit_fcn", "tps")),
    ],
)
def test_model_configs_build_for_each_distortion(option, label):
    for distortion, size in (("R", 28), ("RTS", 42)):
        cfg = compose_config(
            ["data=fashion_mnist", f"data/distortion={distortion}", f"model=digits/{option}"]
        )
        assert cfg.data.image_size == size and cfg.model.crop_size == size
        assert (cfg.model.num_transformers, cfg.model.backbone) == label[:2]
        if len(label) == 3:
            assert cfg.model.transform == label[2]
        keys = ("backbone", "num_transformers", "transform", "localisation", "warp_bound",
                "loc_hidden", "dropout", "trunk_widths", "tps_grid")  # fmt: skip
        model = STCNN(10, image_size=size, crop_size=size, **{k: cfg.model[k] for k in keys})
        assert model(torch.zeros(1, 1, size, size)).logits.shape == (1, 10)


def test_bird_config_still_builds_the_bird_st_cnn():
    cfg = compose_config([])
    assert (cfg.model.localisation, cfg.model.warp_bound) == ("shared", None)
    model = STCNN(
        200, backbone="small", num_transformers=2, image_size=64, crop_size=32,
        transform="attention", dropout=0.5,
    )  # fmt: skip
    names = {n for n, _ in model.named_parameters()}
    assert {"transformer.conv.weight", "transformer.fc1.weight", "transformer.fc2.bias"} <= names
    assert not math.isnan(float(model(torch.zeros(1, 3, 64, 64)).logits.sum().detach()))
