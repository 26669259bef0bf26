"""Digits data: idx reading and its refusals, the distortions, the data module."""

from __future__ import annotations

import gzip
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from stnrepro.data.digits import (
    DEBIAN_FASHION_MNIST,
    IDX_FILES,
    DigitsDataModule,
    distort,
    distortion_grid,
    read_idx,
)
from stnrepro.data.sampling import item_seeds
from stnrepro.errors import ConfigError, DataError


def idx_bytes(array: np.ndarray, magic: int) -> bytes:
    head = magic.to_bytes(4, "big") + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    return head + array.astype(np.uint8).tobytes()


def write_digits(root: Path, n_train: int = 40, n_test: int = 20, gz: bool = True) -> Path:
    """Tiny idx files: a bright square at a class-dependent place on a 28x28 black image."""
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for split, n in (("train", n_train), ("test", n_test)):
        labels = np.arange(n) % 10
        images = np.zeros((n, 28, 28), dtype=np.uint8)
        for i, c in enumerate(labels):
            r, col = 4 + 2 * (c % 5), 6 + 8 * (c // 5)
            images[i, r : r + 8, col : col + 6] = 200 + rng.integers(0, 55)
        for kind, arr, magic in (("images", images, 2051), ("labels", labels, 2049)):
            data = idx_bytes(arr, magic)
            name = IDX_FILES[(split, kind)]
            if gz:
                (root / f"{name}.gz").write_bytes(gzip.compress(data))
            else:
                (root / name).write_bytes(data)
    return root


def test_read_idx_round_trip(tmp_path):
    root = write_digits(tmp_path / "d", gz=False)
    images = read_idx(root / IDX_FILES[("train", "images")], "images")
    assert images.shape == (40, 28, 28) and images.dtype == np.uint8


@pytest.mark.parametrize(
    "damage, message",
    [
        (lambda b: b[:6], "truncated header"),
        (lambda b: (9999).to_bytes(4, "big") + b[4:], "bad magic number"),
        (lambda b: b[:-5], "truncated or corrupt"),
    ],
)
def test_broken_idx_refused_naming_the_file(tmp_path, damage, message):
    root = write_digits(tmp_path / "d", gz=False)
    path = root / IDX_FILES[("train", "images")]
    path.write_bytes(damage(path.read_bytes()))
    dm = DigitsDataModule(str(root))
    with pytest.raises(DataError, match=message) as info:
        dm.validate()
    assert str(path) in str(info.value) and "\n" not in str(info.value)


def test_missing_file_and_count_mismatch_refused(tmp_path):
    root = write_digits(tmp_path / "d")
    (root / f"{IDX_FILES[('test', 'labels')]}.gz").unlink()
    with pytest.raises(DataError, match="t10k-labels-idx1-ubyte.gz: missing"):
        DigitsDataModule(str(root)).validate()
    root = write_digits(tmp_path / "e")
    labels = np.arange(7) % 10
    (root / f"{IDX_FILES[('train', 'labels')]}.gz").write_bytes(
        gzip.compress(idx_bytes(labels, 2049))
    )
    with pytest.raises(DataError, match="7 labels but train-images-idx3-ubyte.gz has 40 images"):
        DigitsDataModule(str(root)).validate()


def test_image_size_must_match_the_canvas(tmp_path):
    root = write_digits(tmp_path / "d")
    with pytest.raises(ConfigError, match="data.image_size=28: distortion RTS"):
        DigitsDataModule(str(root), distortion="RTS", image_size=28).validate()
    with pytest.raises(ConfigError, match="data.distortion='X'"):
        DigitsDataModule(str(root), distortion="X")


@pytest.mark.parametrize(
    "distortion, size", [("none", 28), ("R", 28), ("RTS", 42), ("P", 28), ("E", 28)]
)
def test_distortion_is_a_function_of_the_image_seed(distortion, size):
    images = torch.zeros(4, 28, 28, dtype=torch.uint8)
    images[:, 6:22, 10:18] = 255
    seeds = np.array([5, 6, 7, 8])
    a = distort(images, distortion, seeds)
    assert a.shape == (4, 1, size, size)
    # the same image seed gives the same result whatever else is in the batch
    b = distort(images[[2, 0]], distortion, seeds[[2, 0]])
    torch.testing.assert_close(b[0], a[2], rtol=0, atol=1e-6)
    torch.testing.assert_close(b[1], a[0], rtol=0, atol=1e-6)
    if distortion != "none":
        assert not torch.equal(a[0], distort(images[:1], distortion, np.array([99]))[0])


def test_rotation_by_hand_and_rts_canvas():
    # R with the seed's angle: a 90 deg-symmetric check on a pure rotation grid
    grid = distortion_grid("R", np.array([3]), 28)
    angle = np.radians(np.random.default_rng(3).uniform(-90, 90))
    u = (2 * np.arange(28) + 1) / 28 - 1
    x, y = u[5], u[20]
    c, s = np.cos(angle), np.sin(angle)
    expected = (c * x + s * y, -s * x + c * y)  # inverse rotation of the output point
    np.testing.assert_allclose(grid[0, 20, 5].numpy(), expected, atol=1e-5)
    # RTS: the digit (non-zero pixels) lies within the 42x42 canvas and the border is empty
    images = torch.zeros((8, 28, 28), dtype=torch.uint8)
    images[:, 9:19, 9:19] = 255  # half-extent 5 px * 1.2 * sqrt(2) + 7 px offset < 21 px
    out = distort(images, "RTS", np.arange(8))
    assert out.shape[-1] == 42 and out[..., 0, :].max() == 0 and out.max() > 0.99


def test_datamodule_fixed_test_set_and_fresh_training_distortions(tmp_path):
    root = write_digits(tmp_path / "d")
    a = DigitsDataModule(
        str(root), distortion="RTS", image_size=42, batch_size=8, val_fraction=0.25, seed=0
    )
    b = DigitsDataModule(
        str(root), distortion="RTS", image_size=42, batch_size=8, val_fraction=0.25, seed=7
    )
    a.setup(), b.setup()
    # the test (and val) images do not depend on the run seed
    assert torch.equal(a.test_set.images, b.test_set.images)
    assert torch.equal(a.val_set.images, b.val_set.images)
    assert len(a.val_set) == 10 and len(a.train_set) == 30
    # training: (index, aug_seed) pairs; a new epoch distorts afresh, the same epoch repeats
    seeds0, seeds1 = item_seeds(0, 0, 30), item_seeds(0, 1, 30)
    e0 = a.train_set.__getitems__([(3, int(seeds0[3]))])[0]["image"]
    again = a.train_set.__getitems__([(1, int(seeds0[1])), (3, int(seeds0[3]))])[1]["image"]
    e1 = a.train_set.__getitems__([(3, int(seeds1[3]))])[0]["image"]
    torch.testing.assert_close(e0, again, rtol=0, atol=1e-6)
    assert not torch.equal(e0, e1)
    batch = next(iter(a.train_dataloader()))
    assert batch["image"].shape == (8, 1, 42, 42) and batch["label"].dtype == torch.int64
    fp = a.fingerprint()
    assert len(fp["index_sha256"]) == 64 and fp["distortion"] == "RTS"


def test_test_set_identical_across_processes(tmp_path):
    root = write_digits(tmp_path / "d")
    code = (
        "import sys,hashlib;from stnrepro.data.digits import DigitsDataModule as D;"
        f"d=D({str(root)!r},distortion='P');d.setup();"
        "print(hashlib.sha256(d.test_set.images.numpy().tobytes()).hexdigest())"
    )
    here = DigitsDataModule(str(root), distortion="P")
    here.setup()
    import hashlib

    mine = hashlib.sha256(here.test_set.images.numpy().tobytes()).hexdigest()
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == mine


def test_debian_fashion_mnist_loads():
    if not Path(DEBIAN_FASHION_MNIST).is_dir():
        pytest.skip(f"{DEBIAN_FASHION_MNIST} absent (apt-get install dataset-fashion-mnist)")
    dm = DigitsDataModule(
        None, name="fashion_mnist", distortion="R", train_limit=600, test_limit=500
    )
    dm.setup()
    assert dm.root == DEBIAN_FASHION_MNIST
    assert len(dm.test_set) == 500 and dm.test_set.images.shape[1:] == (1, 28, 28)
