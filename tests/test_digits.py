"""Digits data: idx reading and its refusals, the distortions, the data module."""

from __future__ import annotations

import gzip
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import idx_bytes, write_digits

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
    with pytest.raises(DataError, match=re.escape("t10k-labels-idx1-ubyte.gz: missing")):
        DigitsDataModule(str(root)).validate()
    root = write_digits(tmp_path / "e")
    labels = np.arange(7) % 10
    (root / f"{IDX_FILES[('train', 'labels')]}.gz").write_bytes(
        gzip.compress(idx_bytes(labels, 2049))
    )
    wrong_count = re.escape("7 labels but train-images-idx3-ubyte.gz has 40 images")
    with pytest.raises(DataError, match=wrong_count):
        DigitsDataModule(str(root)).validate()


def test_image_size_must_match_the_canvas(tmp_path):
    root = write_digits(tmp_path / "d")
    with pytest.raises(ConfigError, match=re.escape("data.image_size=28: distortion RTS")):
        DigitsDataModule(str(root), distortion="RTS", image_size=28).validate()
    with pytest.raises(ConfigError, match=re.escape("data.distortion='X'")):
        DigitsDataModule(str(root), distortion="X")


@pytest.mark.parametrize(
    "distortion, size", [("none", 28), ("R", 28), ("RTS", 42), ("P", 28), ("E", 28)]
)
def test_distortion_is_a_function_of_the_image_seed(distortion, size):
    images = torch.zeros(4, 28, 28, dtype=torch.uint8)
    images[:, 6:22, 10:18] = 255
    seeds = np.array([5, 6, 7, 8])
    a = distort(images, distortion, seeds, size)
    assert a.shape == (4, 1, size, size)
    # the same image seed gives the same result whatever else is in the batch
    b = distort(images[[2, 0]], distortion, seeds[[2, 0]], size)
    torch.testing.assert_close(b[0], a[2], rtol=0, atol=1e-6)
    torch.testing.assert_close(b[1], a[0], rtol=0, atol=1e-6)
    if distortion != "none":
        assert not torch.equal(a[0], distort(images[:1], distortion, np.array([99]), size)[0])


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
    out = distort(images, "RTS", np.arange(8), 42)
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


@pytest.mark.slow  # a fresh interpreter: 4 s of imports
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


def _serve(folder: Path):
    """A real HTTP server (python -m http.server) on a free port; returns (process, base URL)."""
    import socket
    import time

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen(
        [sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1", "-d", str(folder)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    for _ in range(100):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return proc, f"http://127.0.0.1:{port}/"
        except OSError:
            time.sleep(0.1)
    proc.kill()
    raise RuntimeError("http.server did not start")


def test_download_digits_through_torchvision_from_a_local_server(tmp_path):
    """stn-data download fashion_mnist: torchvision's downloader against a real HTTP server
    serving Debian's files; Debian re-compressed them, so torchvision's MD5 check refuses
    them in one line, and ``--md5 ''`` accepts them (their contents are still checked)."""
    if not Path(DEBIAN_FASHION_MNIST).is_dir():
        pytest.skip(f"{DEBIAN_FASHION_MNIST} absent (apt-get install dataset-fashion-mnist)")
    from stnrepro.cli.data import main

    proc, url = _serve(Path(DEBIAN_FASHION_MNIST))
    try:
        cmd = ["download", "fashion_mnist", "--out", str(tmp_path / "a"), "--mirror", url]
        assert main([*cmd, "--quiet"]) == 2
        assert main([*cmd[:3], str(tmp_path / "b"), *cmd[4:], "--md5", ""]) == 0
    finally:
        proc.terminate()
        proc.wait(timeout=10)
    raw = tmp_path / "b" / "FashionMNIST" / "raw"
    data = DigitsDataModule(str(raw)).validate()
    assert len(data["train"][1]) == 60000 and len(data["test"][1]) == 10000


def test_download_refusals_are_one_line(tmp_path, capsys):
    from stnrepro.cli.data import main

    assert main(["download", "mnist", "--out", str(tmp_path), "--mirror", "file:///x/"]) == 2
    assert "--mirror=file:///x/: expected an http(s):// URL" in capsys.readouterr().err
    assert main(["download", "--out", str(tmp_path), "--mirror", "http://x/"]) == 2
    assert "--mirror: for mnist and fashion_mnist only" in capsys.readouterr().err
    # nothing listens on port 9: the failure names the dataset and the folder
    assert (
        main(["download", "mnist", "--out", str(tmp_path), "--mirror", "http://127.0.0.1:9/"]) == 2
    )
    err = capsys.readouterr().err
    assert err.startswith("error: mnist: download into") and len(err.strip().splitlines()) == 1
