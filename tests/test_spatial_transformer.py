"""The sampler and the bounded parameterisation: conventions the whole model relies on."""

import math

import pytest
import torch

from stnrepro.models.samplers import crop_boxes, outside_fraction, sample
from stnrepro.models.spatial_transformer import SpatialTransformer, attention_theta, initial_centres


def identity(batch: int) -> torch.Tensor:
    return torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]]).expand(batch, 2, 3)


def test_identity_theta_reproduces_input():
    torch.manual_seed(0)
    image = torch.randn(2, 3, 13, 17)
    # Non-square input: the output grid must still map pixel centres onto pixel centres.
    out = torch.nn.functional.grid_sample(
        image,
        torch.nn.functional.affine_grid(identity(2), [2, 3, 13, 17], align_corners=False),
        align_corners=False,
    )
    assert torch.allclose(out, image, atol=1e-5)
    square = torch.randn(2, 3, 16, 16)
    assert torch.allclose(sample(square, identity(2), 16), square, atol=1e-5)


@pytest.mark.parametrize("shift", [1, 3, -2])
def test_translation_moves_content_by_expected_pixels(shift):
    torch.manual_seed(1)
    size = 16
    image = torch.randn(1, 1, size, size)
    theta = torch.tensor([[[1.0, 0.0, 2.0 * shift / size], [0.0, 1.0, 0.0]]])
    out = sample(image, theta, size)
    # Output column x samples input column x + shift (inside the image).
    lo, hi = max(0, -shift), min(size, size - shift)
    assert torch.allclose(out[..., lo:hi], image[..., lo + shift : hi + shift], atol=1e-5)
    # Outside the image the border pixel is repeated (padding_mode="border").
    if shift > 0:
        assert torch.allclose(out[..., -1], image[..., -1], atol=1e-5)


def test_attention_crop_takes_the_expected_quadrant():
    image = torch.zeros(1, 1, 8, 8)
    image[..., :4, 4:] = 1.0  # top-right quadrant
    theta = attention_theta(torch.tensor([0.5]), torch.tensor([0.5]), torch.tensor([-0.5]))
    crop = sample(image, theta, 4)
    assert torch.allclose(crop, torch.ones(1, 1, 4, 4))


def test_gradients_flow_to_theta_gradcheck():
    torch.manual_seed(2)
    image = torch.randn(1, 2, 6, 6, dtype=torch.float64)
    theta = torch.tensor([[[0.6, 0.1, 0.13], [-0.05, 0.7, -0.21]]], dtype=torch.float64)
    theta.requires_grad_(True)
    assert torch.autograd.gradcheck(lambda t: sample(image, t, 5), (theta,), eps=1e-6, atol=1e-4)


def test_crop_boxes_and_outside_fraction():
    theta = attention_theta(
        torch.tensor([0.5, 0.5]), torch.tensor([0.25, 0.75]), torch.tensor([0.0, 0.0])
    )
    boxes = crop_boxes(theta)
    assert torch.allclose(boxes[0], torch.tensor([-0.25, -0.5, 0.75, 0.5]))
    frac = outside_fraction(theta)
    assert frac[0].item() == 0.0
    assert frac[1].item() == pytest.approx(0.25)  # box x in [0.25, 1.25]: a quarter outside


def test_outside_fraction_counts_the_crop_pixel_centres_for_any_affine_theta():
    theta = torch.rand(5, 2, 3, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    theta = 3 * theta - 1.5
    centres = (torch.arange(16, dtype=torch.float64) + 0.5) / 8 - 1
    expected = []
    for th in theta:
        pts = [th @ torch.tensor([x, y, 1.0], dtype=th.dtype) for y in centres for x in centres]
        expected.append(sum(bool((p.abs() > 1).any()) for p in pts) / 256)
    assert outside_fraction(theta).tolist() == expected


@pytest.mark.parametrize("n", [1, 2, 3, 4])
def test_initial_positions_are_distinct_and_documented(n):
    centres = initial_centres(n, radius=0.25)
    assert len(set(centres)) == n
    if n == 2:
        assert centres == [(0.0, -0.25), (0.0, 0.25)]  # top, bottom
    if n == 4:
        assert centres == [(0.0, -0.25), (0.25, 0.0), (0.0, 0.25), (-0.25, 0.0)]


@pytest.mark.parametrize(
    "transform,fixed_scale,params",
    [("attention", 0.5, 2), ("attention", None, 3), ("affine", None, 6)],
)
def test_head_starts_at_documented_positions_and_stays_bounded(transform, fixed_scale, params):
    st = SpatialTransformer(8, (2, 2), 2, crop_size=4, transform=transform, fixed_scale=fixed_scale)
    assert st.num_params == params
    theta = st(torch.randn(3, 8, 2, 2))
    # Zero-initialised weights: every image starts at the bias positions.
    expected = torch.tensor([[0.5, 0.0, 0.0], [0.0, 0.5, -0.25]])
    assert torch.allclose(theta[:, 0], expected.expand(3, 2, 3), atol=1e-6)
    assert torch.allclose(theta[:, 1, 1, 2], torch.full((3,), 0.25), atol=1e-6)
    # Huge raw outputs stay bounded; attention crops never leave the image.
    raw = torch.randn(5, 2, params) * 100
    theta = st.decode(raw)
    assert theta.abs().max() <= 1 + 1e-6
    if transform == "attention":
        assert outside_fraction(theta).max().item() == 0.0
        lo, hi = st.scale_bounds
        assert ((theta[..., 0, 0] >= lo - 1e-6) & (theta[..., 0, 0] <= hi + 1e-6)).all()


def test_crops_have_crop_size():
    st = SpatialTransformer(8, (2, 2), 3, crop_size=5)
    image = torch.randn(2, 3, 20, 20)
    crops = st.crops(image, st(torch.randn(2, 8, 2, 2)))
    assert [c.shape for c in crops] == [torch.Size([2, 3, 5, 5])] * 3
    assert math.isclose(st.fixed_scale, 0.5)
