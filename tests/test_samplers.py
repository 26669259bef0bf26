"""The fast crop samplers compute the same function as the reference ``samplers.sample``.

Why: the benchmark's speed-ups only count if the model is unchanged. Crops, gradients (to the
image and to theta, i.e. to the localisation network) and a whole ST-CNN training step must
match the ``F.affine_grid`` + ``F.grid_sample`` reference within float tolerance.
"""

from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn.functional as F
from torchvision.ops import roi_align

from stnrepro.errors import ConfigError
from stnrepro.models.samplers import (
    SAMPLERS,
    analytic_attention_grid,
    analytic_crops,
    check_attention_theta,
    crop_boxes,
    crop_corners,
    crop_rois,
    roi_align_crops,
    sample,
    sample_crops,
)
from stnrepro.models.spatial_transformer import SpatialTransformer, attention_theta
from stnrepro.models.st_cnn import STCNN, validate_model_args

FAST = ("analytic", "roi_align")
#: float32 bound: coordinates are rounded at ~1e-7 relative, i.e. ~3e-5 px at 448 px, times
#: image differences of a few units between neighbouring pixels of a random image.
TOL32 = 1e-4
TOL64 = 1e-10


def random_attention(b: int, n: int, dtype=torch.float32, seed: int = 0) -> torch.Tensor:
    """theta (B, N, 2, 3) with s in [0.25, 1] and t inside the project's bounds (crop in image)."""
    g = torch.Generator().manual_seed(seed)
    s = 0.25 + 0.75 * torch.rand(b, n, generator=g, dtype=dtype)
    t = (1 - s).unsqueeze(-1) * (2 * torch.rand(b, n, 2, generator=g, dtype=dtype) - 1)
    return attention_theta(s, t[..., 0], t[..., 1])


def reference(image: torch.Tensor, theta: torch.Tensor, size: int) -> list[torch.Tensor]:
    return [sample(image, theta[:, i], size) for i in range(theta.shape[1])]


def fast(name: str, image: torch.Tensor, theta: torch.Tensor, size: int) -> list[torch.Tensor]:
    return sample_crops(image, theta, size, name)


def max_err(a: list[torch.Tensor], b: list[torch.Tensor]) -> float:
    return max(float((x - y).abs().max()) for x, y in zip(a, b, strict=True))


def use_sampler(net: STCNN, sampler: str) -> None:
    """Switch the crop sampler of a built STCNN (same weights)."""
    assert net.transformer is not None
    net.transformer.sampler = sampler


# --------------------------------------------------------------------------- crops


def test_roi_box_is_the_crop_square_in_pixel_edge_coordinates():
    # s = 0.5, t = (0.5, -0.5): the top-right quadrant of a 40 (H) x 60 (W) image.
    theta = attention_theta(torch.tensor([[0.5]]), torch.tensor([[0.5]]), torch.tensor([[-0.5]]))
    assert crop_rois(theta, 40, 60).tolist() == [[0.0, 30.0, 0.0, 60.0, 20.0]]
    # Rows are transformer-major: row n * B + b.
    rois = crop_rois(random_attention(3, 2), 40, 60)
    assert rois[:, 0].tolist() == [0, 1, 2, 0, 1, 2]


@pytest.mark.parametrize("sampler", FAST)
@pytest.mark.parametrize("size", [7, 16, 40])  # down-, equal- and up-sampling of the region
def test_crops_match_grid_sample_float32(sampler, size):
    torch.manual_seed(0)
    image = torch.randn(3, 3, 37, 53)  # non-square, odd sizes
    theta = random_attention(3, 4, seed=size)
    err = max_err(fast(sampler, image, theta, size), reference(image, theta, size))
    assert err < TOL32, f"{sampler}: max abs error {err:.2e}"


@pytest.mark.parametrize("sampler", FAST)
def test_crops_match_grid_sample_float64_to_rounding(sampler):
    """In float64 the fast paths are the same function to 1e-13: no convention offset."""
    torch.manual_seed(1)
    image = torch.randn(2, 3, 29, 41, dtype=torch.float64)
    theta = random_attention(2, 3, dtype=torch.float64, seed=7)
    err = max_err(fast(sampler, image, theta, 13), reference(image, theta, 13))
    assert err < TOL64, f"{sampler}: max abs error {err:.2e}"


def test_analytic_grid_equals_affine_grid_for_any_theta():
    """The analytic grid keeps the b, c terms: exact for general affine thetas too."""
    g = torch.Generator().manual_seed(3)
    theta = torch.rand(4, 2, 3, generator=g, dtype=torch.float64) * 2 - 1
    ref = F.affine_grid(theta, [4, 1, 9, 9], align_corners=False)
    assert torch.allclose(analytic_attention_grid(theta, 9), ref, atol=1e-12)
    image = torch.randn(4, 3, 20, 30, dtype=torch.float64)
    theta = theta.unsqueeze(1)
    assert max_err(analytic_crops(image, theta, 9), reference(image, theta, 9)) < TOL64


def test_roi_align_refuses_non_attention_theta():
    theta = random_attention(2, 2)
    theta[1, 0, 0, 1] = 0.1  # a shear
    with pytest.raises(ValueError, match="b = c = 0"):
        roi_align_crops(torch.randn(2, 3, 20, 20), theta, 8)
    with pytest.raises(ValueError, match="expected shape"):
        check_attention_theta(torch.zeros(2, 4))
    with pytest.raises(ValueError, match="sampler="):
        sample_crops(torch.randn(1, 3, 8, 8), random_attention(1, 1), 4, "nearest")


def test_outside_the_image_roi_align_matches_border_only_within_half_a_pixel():
    """Documented limit: beyond half a pixel outside, roi_align gives 0, grid_sample the border."""
    image = torch.rand(1, 1, 10, 10) + 1.0  # strictly positive
    w, s, size = 10, 0.5, 10
    # Pixel k's centre is at coordinate k, the right edge at W - 0.5. Put the last sample
    # centre at W - 0.05 (0.45 px past the edge): normalised x = 2 (p + 0.5) / W - 1, and the
    # last output column samples x = s (1 - 1/S) + tx.
    tx = (2 * (w - 0.05 + 0.5) / w - 1) - s * (1 - 1 / size)
    theta = attention_theta(torch.tensor([[s]]), torch.tensor([[tx]]), torch.tensor([[0.0]]))
    ref = reference(image, theta, size)
    assert max_err(roi_align_crops(image, theta, size), ref) < TOL32
    assert max_err(analytic_crops(image, theta, size), ref) < TOL32
    far = attention_theta(torch.tensor([[s]]), torch.tensor([[0.9]]), torch.tensor([[0.0]]))
    ref_far = reference(image, far, size)[0]
    roi_far = roi_align_crops(image, far, size)[0]
    assert (ref_far > 0).all() and (roi_far[..., -1] == 0).all()  # zeros beyond the border
    assert max_err(analytic_crops(image, far, size), [ref_far]) < TOL32


def test_bf16_theta_is_sampled_at_float32_coordinates():
    """Under bf16 autocast the head's theta is bf16; the fast paths build the grid in fp32."""
    torch.manual_seed(4)
    image = torch.randn(2, 3, 64, 64)
    theta = random_attention(2, 2).bfloat16()
    ref = reference(image, theta.float(), 32)
    for name in FAST:
        out = fast(name, image, theta, 32)
        assert all(o.dtype == torch.float32 for o in out)
        assert max_err(out, ref) < TOL32


# --------------------------------------------------------------------------- gradients


def test_plain_roi_align_gives_boxes_no_gradient():
    """The reason for the autograd wrapper: torchvision's roi_align backward ignores the boxes."""
    image = torch.randn(1, 3, 20, 30)
    rois = torch.tensor([[0.0, 2.0, 3.0, 15.0, 14.0]], requires_grad=True)
    out = roi_align(image, rois, 5, 1.0, 1, True)
    (grad,) = torch.autograd.grad(out.sum(), rois, allow_unused=True)
    assert grad is None


@pytest.mark.parametrize("sampler", FAST)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_gradients_to_image_and_theta_match(sampler, dtype):
    torch.manual_seed(5)
    image = torch.randn(3, 3, 31, 45, dtype=dtype)
    theta = random_attention(3, 4, dtype=dtype, seed=11)
    weights = [torch.randn(3, 3, 12, 12, dtype=dtype) for _ in range(4)]

    def grads(fn) -> tuple[torch.Tensor, torch.Tensor]:
        img, th = image.clone().requires_grad_(), theta.clone().requires_grad_()
        loss = sum((c * w).sum() for c, w in zip(fn(img, th, 12), weights, strict=True))
        gi, gt = torch.autograd.grad(loss, (img, th))
        return gi, gt

    ref_img, ref_theta = grads(reference)
    img_g, theta_g = grads(lambda i, t, s: fast(sampler, i, t, s))
    tol = TOL32 if dtype == torch.float32 else TOL64
    assert float((img_g - ref_img).abs().max()) < tol
    # Theta gradients sum over all S*S*C samples: compare relative to their size.
    rel = float((theta_g - ref_theta).abs().max() / ref_theta.abs().max())
    assert rel < (1e-5 if dtype == torch.float32 else 1e-12), rel
    assert theta_g[..., 0, 2].abs().sum() > 0  # the translation gets a gradient


def test_roi_align_crops_gradcheck():
    """Numerical check of the custom backward w.r.t. the attention parameters and image."""
    torch.manual_seed(6)
    image = torch.randn(2, 2, 9, 11, dtype=torch.float64, requires_grad=True)
    # Generic values: a sample exactly on a pixel centre is a kink of bilinear interpolation,
    # where the numerical derivative disagrees with ANY sampler's (the reference's too).
    s = torch.tensor([[0.513, 0.707], [0.311, 0.893]], dtype=torch.float64, requires_grad=True)
    t = torch.tensor(
        [[[0.217, -0.293], [0.109, 0.053]], [[-0.411, 0.347], [0.013, -0.021]]],
        dtype=torch.float64,
    ).requires_grad_()

    def fn(image, s, t):
        theta = attention_theta(s, t[..., 0], t[..., 1])
        return torch.cat(roi_align_crops(image, theta, 5, validate=False))

    assert torch.autograd.gradcheck(fn, (image, s, t), eps=1e-6, atol=1e-6)


@pytest.mark.parametrize("sampler", FAST)
def test_fast_paths_compile_with_symbolic_shapes(sampler):
    """torch.compile(dynamic=True, fullgraph=True): no F.affine_grid, no graph break."""
    torch._dynamo.reset()

    def loss(image, theta):
        return sum(c.square().sum() for c in sample_crops(image, theta, 6, sampler, False))

    compiled = torch.compile(loss, backend="aot_eager", dynamic=True, fullgraph=True)
    image = torch.randn(3, 3, 20, 24)
    theta = random_attention(3, 2).requires_grad_()
    got = compiled(image, theta)
    (g_got,) = torch.autograd.grad(got, theta)
    want = loss(image, theta)
    (g_want,) = torch.autograd.grad(want, theta)
    assert torch.allclose(got, want, rtol=1e-5)
    assert torch.allclose(g_got, g_want, rtol=1e-4, atol=1e-4)
    torch._dynamo.reset()


# --------------------------------------------------------------------------- training step


@pytest.mark.parametrize("sampler", FAST)
def test_st_cnn_training_step_matches(sampler):
    """Same weights, same batch: logits, loss, every gradient and the SGD update agree."""
    torch.manual_seed(7)
    ref_net = STCNN(
        num_classes=5, backbone="small", num_transformers=2, image_size=64, crop_size=32,
        dropout=0.0,
    )  # fmt: skip
    # Move the transformers off their symmetric start so the test is not a special case.
    with torch.no_grad():
        ref_net.transformer.fc2.bias.add_(0.3 * torch.randn_like(ref_net.transformer.fc2.bias))
    net = copy.deepcopy(ref_net)
    use_sampler(net, sampler)
    image = torch.randn(4, 3, 64, 64)
    label = torch.tensor([0, 1, 2, 3])

    def step(model: STCNN) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
        opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
        out = model(image)
        loss = F.cross_entropy(out.logits, label)
        opt.zero_grad()
        loss.backward()
        grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
        opt.step()
        return out.logits.detach(), loss.detach(), grads

    ref_logits, ref_loss, ref_grads = step(ref_net)
    logits, loss, grads = step(net)
    assert torch.allclose(logits, ref_logits, atol=1e-4, rtol=1e-4)
    assert torch.allclose(loss, ref_loss, atol=1e-5, rtol=1e-5)
    assert grads.keys() == ref_grads.keys()
    for name, g in grads.items():
        scale = float(ref_grads[name].abs().max()) + 1e-12
        assert float((g - ref_grads[name]).abs().max()) / scale < 1e-3, name
    # The localisation network learns through the crops (only through theta).
    assert ref_grads["transformer.fc2.weight"].abs().sum() > 0
    assert grads["transformer.fc2.weight"].abs().sum() > 0
    for (n, p), q in zip(net.named_parameters(), ref_net.parameters(), strict=True):
        assert torch.allclose(p, q, atol=1e-5), n


def test_spatial_transformer_sampler_option():
    st = SpatialTransformer(8, (2, 2), 2, crop_size=8, sampler="roi_align")
    image = torch.randn(2, 3, 16, 16)
    theta = random_attention(2, 2)
    assert max_err(st.crops(image, theta), reference(image, theta, 8)) < TOL32
    assert set(SAMPLERS) == {"grid_sample", "analytic", "roi_align"}


MODEL_ARGS = {
    "backbone": "small", "num_transformers": 2, "image_size": 64, "crop_size": 32,
    "transform": "attention", "fixed_scale": 0.5, "init_scale": 0.5, "scale_bounds": (0.25, 1.0),
    "dropout": 0.5,
}  # fmt: skip


@pytest.mark.parametrize(
    "sampler,transform,expected",
    [
        ("bilinear", "attention",
         "model.sampler='bilinear': expected one of grid_sample, analytic, roi_align"),
        ("roi_align", "affine",
         "model.sampler=roi_align: needs model.transform=attention (got 'affine'); "
         "use model.sampler=analytic or grid_sample for affine"),
    ],
)  # fmt: skip
def test_sampler_rule_is_the_same_line_everywhere(sampler, transform, expected):
    """One rule: the config check, the module and the dispatch refuse with the same line."""
    calls = [
        lambda: validate_model_args(**MODEL_ARGS | {"sampler": sampler, "transform": transform}),
        lambda: SpatialTransformer(8, (2, 2), 2, crop_size=8, transform=transform, sampler=sampler),
    ]
    if transform == "attention":  # the dispatch only knows the name
        theta = random_attention(1, 1)
        calls.append(lambda: sample_crops(torch.randn(1, 3, 8, 8), theta, 4, sampler))
    for call in calls:
        with pytest.raises(ConfigError) as info:
            call()
        assert str(info.value) == expected


def test_crop_boxes_bound_the_crop_corners():
    """Boxes are the corners' bounding box; corners keep an affine crop's true outline."""
    c, s = math.cos(0.3), math.sin(0.3)
    rotation = [[0.5 * c, -0.5 * s, 0.1], [0.5 * s, 0.5 * c, -0.2]]
    theta = torch.tensor([rotation], dtype=torch.float64)
    corners = crop_corners(theta)  # TL, TR, BR, BL of the output square
    expected = torch.tensor([[-1.0, -1.0], [1.0, -1.0], [1.0, 1.0], [-1.0, 1.0]], dtype=theta.dtype)
    expected = expected @ theta[0, :, :2].T + theta[0, :, 2]
    torch.testing.assert_close(corners[0], expected, rtol=0, atol=1e-15)
    box = crop_boxes(theta)[0]
    torch.testing.assert_close(box[:2], expected.amin(0), rtol=0, atol=0)
    torch.testing.assert_close(box[2:], expected.amax(0), rtol=0, atol=0)
