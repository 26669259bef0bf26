"""Synthetic CUB-layout dataset: format, determinism, geometry, caching, CLI."""

from __future__ import annotations

import hashlib
import itertools
import json
import shutil
import threading
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from stnrepro.cli.data import main as stn_data
from stnrepro.config import compose_config
from stnrepro.data import synth_draw, synthetic
from stnrepro.data.cub_index import CUBIndex
from stnrepro.data.synth_settings import (
    GENERATOR_KEYS,
    GENERATOR_VERSION,
    folder_name,
    make_settings,
    preset_settings,
)
from stnrepro.data.synthetic import SynthBirdsDataModule, ensure_generated, generate, is_complete
from stnrepro.errors import ConfigError, DataError

# a few tiny images: enough to exercise every code path in well under a second
SMALL = {"num_classes": 4, "images_per_class": 6, "image_width": 96, "image_height": 72}


def _small(**kw):
    return preset_settings("synth_birds_tiny", **{**SMALL, **kw})


def _tree_hash(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def _generator_values(preset: str) -> dict:
    """Every generator setting of the data config ``preset`` (what Hydra passes the module)."""
    return {k: v for k, v in asdict(preset_settings(preset)).items() if k in GENERATOR_KEYS}


def _dm(cache_dir: Path, **kw) -> SynthBirdsDataModule:
    args = {
        **_generator_values("synth_birds_tiny"),
        "preset": "synth_birds_tiny",
        "cache_dir": str(cache_dir),
        "image_size": 64,
        "batch_size": 8,
        "num_workers": 0,
        "pin_memory": False,
        "persistent_workers": False,
        "gen_progress": False,
        "gen_workers": 1,
    }
    return SynthBirdsDataModule(**{**args, **kw})


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> tuple[SynthBirdsDataModule, CUBIndex]:
    """The real synth_birds_tiny preset, generated once through the data module."""
    dm = _dm(tmp_path_factory.mktemp("cache"), gen_workers=2)
    dm.prepare_data()
    return dm, CUBIndex.load(dm.root)


def test_tiny_preset_loads_through_cub_datamodule(tiny):
    dm, index = tiny
    assert index.num_classes == 8 == dm.num_classes  # conf/data/synth_birds_tiny.yaml
    assert index.num_images == 8 * 50
    assert index.part_names == list(synth_draw.PART_NAMES)
    assert index.bboxes is not None and index.parts is not None
    assert Path(dm.root).name == folder_name(dm.settings)
    assert Path(dm.root).name.startswith("synth_birds_tiny-v")
    assert "seed0" in Path(dm.root).name
    readme = (Path(dm.root) / "README.md").read_text()
    assert "seed 0" in readme and "synth_birds_tiny" in readme and "version" in readme

    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    assert batch["image"].shape == (8, 3, 64, 64)
    assert batch["label"].min() >= 0 and batch["label"].max() < dm.num_classes
    assert batch["parts"].shape[1:] == (len(synth_draw.PART_NAMES), 3)
    test_batch = next(iter(dm.test_dataloader()))
    assert test_batch["bbox"].shape == (8, 4)


def test_boxes_inside_image_and_contain_visible_parts(tiny):
    _, index = tiny
    assert index.bboxes is not None and index.parts is not None
    names = index.part_names
    for row in range(index.num_images):
        with Image.open(index.image_path(row)) as im:
            w, h = im.size
            assert im.format == "JPEG" and im.mode == "RGB"
        x, y, bw, bh = index.bboxes[row].tolist()
        assert x >= 0 and y >= 0 and bw > 0 and bh > 0
        assert x + bw <= w and y + bh <= h
        # CUB-like share of the image (design: 10-60% of the area)
        assert 0.05 <= bw * bh / (w * h) <= 0.65
        parts = index.parts[row]
        vis = parts[:, 2] == 1
        assert np.all((parts[vis, 0] >= x) & (parts[vis, 0] <= x + bw))
        assert np.all((parts[vis, 1] >= y) & (parts[vis, 1] <= y + bh))
        assert np.all(parts[~vis, :2] == 0)  # CUB convention for invisible parts
        for side_part in ("eye", "wing"):  # the far side is occluded
            left, right = names.index("left_" + side_part), names.index("right_" + side_part)
            assert not (vis[left] and vis[right])
        assert vis.sum() >= 3  # foreground leaves hide a few parts at most
    # both facing directions occur, so both sides' parts are used
    left_eye = index.parts[:, names.index("left_eye"), 2]
    assert 0 < left_eye.mean() < 1
    # foreground leaves occasionally hide a near-side part (always-present parts: 8 of 10)
    near_visible = index.parts[:, :, 2].sum(1)
    assert (near_visible < len(names) - 2).any() and (near_visible == len(names) - 2).mean() > 0.6


def test_images_vary_in_size_like_cub(tiny):
    _, index = tiny
    sizes = set()
    for row in range(0, index.num_images, 7):
        with Image.open(index.image_path(row)) as im:
            sizes.add(im.size)
    assert len(sizes) > 5
    assert any(w < h for w, h in sizes) and any(w > h for w, h in sizes)


def test_class_balance_and_split_sizes(tiny):
    dm, index = tiny
    s = dm.settings
    counts = np.bincount(index.labels, minlength=s.num_classes)
    assert counts.tolist() == [s.images_per_class] * s.num_classes
    train_counts = np.bincount(index.labels[index.is_train], minlength=s.num_classes)
    assert train_counts.tolist() == [s.num_train_per_class] * s.num_classes
    assert s.num_train_per_class == round(s.train_fraction * s.images_per_class)
    # the split is random within a class, not "first half"
    first = index.is_train[index.labels == 0]
    assert not (first[: s.num_train_per_class].all() and not first[s.num_train_per_class :].any())


def test_generation_is_deterministic_across_worker_counts(tmp_path):
    s = _small()
    a = generate(s, tmp_path / "a", workers=1, progress=False)
    b = generate(s, tmp_path / "b", workers=2, progress=False)
    ha, hb = _tree_hash(a), _tree_hash(b)
    assert ha == hb
    assert sum(k.endswith(".jpg") for k in ha) == s.num_images
    c = generate(_small(gen_seed=1), tmp_path / "c", workers=1, progress=False)
    assert _tree_hash(c) != ha


# Annotations depend only on the numpy Generator streams and exact arithmetic (no libm, no
# Pillow), so they must match on every machine; JPEG bytes also need the same Pillow/libjpeg.
GOLDEN_INDEX_SHA256 = "fad5ad241fecb1c8bfacb27e4452fabf97b0d415e8b09b47f6188b1d63cfaf1b"


def test_index_files_match_golden_hash(tmp_path):
    root = generate(_small(), tmp_path / "g", workers=1, progress=False)
    digest = hashlib.sha256()
    for name in (
        "images.txt",
        "classes.txt",
        "image_class_labels.txt",
        "train_test_split.txt",
        "bounding_boxes.txt",
        "parts/part_locs.txt",
    ):
        digest.update((root / name).read_bytes())
    assert digest.hexdigest() == GOLDEN_INDEX_SHA256, (
        "generator output changed: if intended, bump GENERATOR_VERSION and update the hash"
    )


def test_folder_name_encodes_settings():
    base = _small()
    assert folder_name(base) == folder_name(_small())
    names = {
        folder_name(base),
        folder_name(_small(gen_seed=1)),
        folder_name(_small(images_per_class=8)),
        folder_name(_small(max_rotation_deg=10.0)),
        folder_name(preset_settings("synth_birds")),
    }
    assert len(names) == 5
    assert folder_name(_small(gen_seed=3)).startswith(
        f"synth_birds_tiny-v{GENERATOR_VERSION}-seed3-"
    )


def test_auto_generation_on_first_use_then_reuse(tmp_path, monkeypatch):
    calls = []
    real = synthetic.generate

    def counting(*args, **kwargs):
        calls.append(args)
        return real(*args, **kwargs)

    monkeypatch.setattr(synthetic, "generate", counting)
    cache = tmp_path / "cache"
    dm = _dm(cache, **SMALL)
    assert not Path(dm.root).exists()
    dm.prepare_data()
    assert len(calls) == 1 and is_complete(dm.root, dm.settings)
    marker = Path(dm.root) / synthetic.COMPLETE_MARKER
    jpg = next(Path(dm.root, "images").rglob("*.jpg"))
    stamps = (marker.stat().st_mtime_ns, jpg.stat().st_mtime_ns)

    again = _dm(cache, **SMALL)
    again.prepare_data()
    again.setup()
    assert again.root == dm.root and len(calls) == 1
    assert (marker.stat().st_mtime_ns, jpg.stat().st_mtime_ns) == stamps
    # only the dataset folder and its lock file: no leftovers
    assert sorted(p.name for p in cache.iterdir() if not p.name.endswith(".lock")) == [
        Path(dm.root).name
    ]

    # validate() alone (code that checks the data before fit) also generates
    fresh = _dm(tmp_path / "other", **SMALL)
    assert fresh.validate().num_images == dm.settings.num_images
    # a changed seed is a different folder next to the first one
    seeded = _dm(cache, gen_seed=5, **SMALL)
    assert seeded.root != dm.root
    seeded.prepare_data()
    assert len(calls) == 3 and is_complete(dm.root) and is_complete(seeded.root)


def test_interrupted_generation_leaves_nothing_complete(tmp_path, monkeypatch):
    s = _small()
    real = synth_draw.render_chunk
    done = []

    def flaky(args):
        if done:
            raise KeyboardInterrupt  # "Ctrl-C" midway through the images
        done.append(1)
        return real(args)

    monkeypatch.setattr(synth_draw, "render_chunk", flaky)
    cache = tmp_path / "cache"
    with pytest.raises(KeyboardInterrupt):
        ensure_generated(s, cache, workers=1, progress=False)
    assert done  # it did write some images before failing
    leftovers = [p for p in cache.iterdir() if not p.name.endswith(".lock")]
    assert leftovers == []
    monkeypatch.setattr(synth_draw, "render_chunk", real)

    # a run killed hard leaves its temporary folder: never mistaken for data, cleaned next time
    stale = cache / f".{folder_name(s)}.tmp-999999-deadbeef"
    (stale / "images").mkdir(parents=True)
    (stale / "images.txt").write_text("1 x.jpg\n")
    root = ensure_generated(s, cache, workers=1, progress=False)
    assert is_complete(root, s) and not stale.exists()
    assert CUBIndex.load(root).num_images == s.num_images


def test_concurrent_first_use_generates_once(tmp_path, monkeypatch):
    calls = []
    real = synthetic.generate

    def slow(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(synthetic, "generate", slow)
    s = _small()
    roots: list[Path] = []
    errors: list[BaseException] = []

    def use():
        try:
            roots.append(ensure_generated(s, tmp_path, workers=1, progress=False))
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=use) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and len(calls) == 1
    assert roots[0] == roots[1] and is_complete(roots[0], s)


def test_existing_incomplete_folder_is_refused_not_overwritten(tmp_path):
    s = _small()
    root = tmp_path / folder_name(s)
    root.mkdir()
    (root / "mine.txt").write_text("user data")
    with pytest.raises(DataError, match="not a complete synthetic dataset"):
        ensure_generated(s, tmp_path, workers=1, progress=False)
    assert (root / "mine.txt").read_text() == "user data"


def test_config_errors(tmp_path):
    presets = r"expected one of synth_birds, synth_birds_tiny$"
    with pytest.raises(ConfigError, match=r"data\.preset='nope': " + presets):
        preset_settings("nope")
    with pytest.raises(ConfigError, match=r"data\.preset='cub': " + presets):
        preset_settings("cub")  # a data config, but not a synthetic one
    with pytest.raises(ConfigError, match=r"data\.num_classes=0: expected a positive integer"):
        preset_settings("synth_birds_tiny", num_classes=0)
    with pytest.raises(ConfigError, match=r"data\.images_per_class=1"):
        preset_settings("synth_birds_tiny", images_per_class=1)
    with pytest.raises(ConfigError, match=r"data\.train_fraction"):
        preset_settings("synth_birds_tiny", train_fraction=1.0)
    with pytest.raises(ConfigError, match=r"data\.image_width='big': expected an integer"):
        preset_settings("synth_birds_tiny", image_width="big")
    with pytest.raises(ConfigError, match=r"data\.wingspan=3: unknown generator setting"):
        preset_settings("synth_birds_tiny", wingspan=3)
    # no hidden defaults: a setting the config leaves out is named, not made up
    values = _generator_values("synth_birds_tiny")
    del values["max_rotation_deg"]
    with pytest.raises(ConfigError, match=r"^data\.max_rotation_deg: missing"):
        make_settings("synth_birds_tiny", **values)
    with pytest.raises(ConfigError, match=r"^data\.genus_size: missing"):
        _dm(tmp_path, genus_size=None)
    with pytest.raises(ConfigError, match=r"data\.root=.*expected null"):
        _dm(tmp_path, root=str(tmp_path / "elsewhere"))
    dm = _dm(tmp_path, **SMALL)
    assert _dm(tmp_path, root=dm.root, **SMALL).root == dm.root  # the computed root is fine
    with pytest.raises(ConfigError) as info:
        preset_settings("synth_birds", min_bird_area=0.7, max_bird_area=0.2)
    assert "\n" not in str(info.value) and "min_bird_area" in str(info.value)


def test_class_structure_is_fine_grained():
    classes = synth_draw.make_classes(200, 4, 0)
    assert len(classes) == 200 and [c.index for c in classes] == list(range(200))
    keys = {(c.body_colour, c.beak_colour, c.attrs) for c in classes}
    assert len(keys) == 200  # all distinct
    assert len({c.name for c in classes}) == 200

    def diff(a, b):
        return sum(x != y for x, y in zip(a.attrs, b.attrs, strict=True))

    # siblings (same genus) differ in few small-region attributes
    for a, b in itertools.combinations(classes, 2):
        if a.genus == b.genus:
            assert 1 <= diff(a, b) <= 4
    nearest = [min(diff(a, b) for b in classes if b is not a) for a in classes]
    assert np.mean(np.array(nearest) <= 2) > 0.9
    # body colour (the large-area cue) is shared by many classes
    per_colour = np.unique([c.body_colour for c in classes], return_counts=True)[1]
    assert len(per_colour) == len(synth_draw.BODY_COLOURS) and per_colour.min() >= 16
    # deterministic for a seed, different for another
    assert synth_draw.make_classes(200, 4, 0) == classes
    assert synth_draw.make_classes(200, 4, 1) != classes


def test_exact_geometry_helpers():
    # tan(15 deg) = 2 - sqrt(3); the pure-arithmetic series must match to the last bits
    assert synth_draw.tan_half_deg(30.0) == pytest.approx(2 - 3**0.5, rel=1e-15)
    circle = synth_draw._CIRCLE
    assert np.allclose(np.hypot(circle[:, 0], circle[:, 1]), 1.0, atol=1e-15)
    angles = np.arctan2(circle[:, 1], circle[:, 0]) % (2 * np.pi)
    assert np.all(np.diff(angles) > 0)  # ordered, so polygons are simple


@pytest.mark.parametrize("name", ["synth_birds", "synth_birds_tiny"])
def test_hydra_config_is_the_preset(name, tmp_path):
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    cfg = compose_config([f"data={name}"])
    data = cfg.data
    assert data.root is None and data.preset == name and data.name == name
    # --cfg job shows every generator setting: all of them are in the composed config
    assert set(GENERATOR_KEYS) <= set(data) and cfg.model.num_classes == data.num_classes
    # data.seed is ${seed}: the job config carries it
    job = {"paths": {"data_dir": str(tmp_path)}, "seed": cfg.seed, "data": data}
    dm = instantiate(OmegaConf.create(job).data)
    assert isinstance(dm, SynthBirdsDataModule)
    assert dm.settings == preset_settings(name)  # the CLI and the job read the same values
    assert dm.num_classes == data.num_classes and dm.name == name
    assert Path(dm.root).parent == tmp_path and not Path(dm.root).exists()  # lazy


def test_tiny_preset_differs_from_the_full_one_only_in_size():
    full, tiny = asdict(preset_settings("synth_birds")), asdict(preset_settings("synth_birds_tiny"))
    differ = {k for k in full if full[k] != tiny[k]}
    assert differ == {"preset", "num_classes", "images_per_class", "image_width", "image_height"}
    assert (tiny["num_classes"], tiny["images_per_class"]) == (8, 50)


def _listing(folder: Path) -> list[str]:
    """Folder contents but the lock files (kept on purpose: deleting one races a waiter)."""
    return sorted(p.name for p in folder.iterdir() if not p.name.endswith(".lock"))


def test_cli_writes_dataset_and_rejects_bad_input(tmp_path, capsys):
    out = tmp_path / "ds"
    opts = ["--preset", "synth_birds_tiny", "--quiet", "--workers", "1"]
    small = ["--num-classes", "3", "--images-per-class", "4", "--width", "64", "--height", "48"]
    args = ["generate", "--out", str(out), *opts, *small]
    assert stn_data(args) == 0
    index = CUBIndex.load(out)
    assert index.num_images == 12 and index.num_classes == 3
    assert _listing(tmp_path) == ["ds"]  # no temporary leftovers
    assert "12 images, 3 classes" in capsys.readouterr().out
    assert stn_data(args) == 0  # complete with the same settings: reused
    assert "already generated" in capsys.readouterr().out

    assert stn_data([*args, "--seed", "4"]) == 2  # exists with other settings
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1

    custom = tmp_path / "custom"
    more = ["--set", "max_rotation_deg=10", "--set", "size_jitter=0"]
    assert stn_data(["generate", "--out", str(custom), *opts, *small, *more]) == 0
    settings = json.loads((custom / "synth_settings.json").read_text())
    assert settings["max_rotation_deg"] == 10.0 and settings["size_jitter"] == 0.0
    shutil.rmtree(custom)
    capsys.readouterr()

    x = str(tmp_path / "x")
    base = ["generate", "--preset", "synth_birds_tiny", "--out", x]
    for bad in (
        [],
        ["frobnicate"],
        ["generate", "--preset", "nope", "--out", x],
        ["generate", "--preset", "cub", "--out", x],
        ["generate", "--preset", "synth_birds_tiny"],
        [*base, "--set", "wingspan=3"],
        [*base, "--set", "size_jitter"],
        [*base, "--num-classes", "2", "--set", "num_classes=3"],
        [*base, "--num-classes", "0"],
        [*base, "--workers", "0"],
    ):
        assert stn_data(bad) == 2, bad
        err = capsys.readouterr().err
        assert err.startswith("error: ") and err.count("\n") == 1, err
    assert not (tmp_path / "x").exists()
    assert _listing(tmp_path) == ["ds"]


def test_cli_generate_uses_the_library_folder_logic(tmp_path):
    """Same atomic/locked path as the data module: a stale temporary folder is cleaned up."""
    out = tmp_path / "ds"
    stale = tmp_path / ".ds.tmp-999999-deadbeef"
    (stale / "images").mkdir(parents=True)
    argv = ["generate", "--preset", "synth_birds_tiny", "--out", str(out), "--quiet"]
    assert stn_data([*argv, "--workers", "1", "--num-classes", "2", "--images-per-class", "2"]) == 0
    assert not stale.exists() and is_complete(out)


def test_extra_test_images_leave_the_training_images_and_split_unchanged(tmp_path):
    base = generate(_small(), tmp_path / "base", workers=1, progress=False)
    more = generate(_small(extra_test_per_class=3), tmp_path / "more", workers=1, progress=False)
    old, new = CUBIndex.load(base), CUBIndex.load(more)
    per_class = SMALL["images_per_class"]
    assert new.num_images == old.num_images + 3 * SMALL["num_classes"]
    assert new.is_train.sum() == old.is_train.sum()  # every extra image is a test image
    old_files = {str(p.relative_to(base)): p.read_bytes() for p in base.rglob("*.jpg")}
    new_files = {str(p.relative_to(more)): p.read_bytes() for p in more.rglob("*.jpg")}
    assert all(new_files[name] == data for name, data in old_files.items())  # same pixels
    old_train = {old.image_path(r).name for r in range(old.num_images) if old.is_train[r]}
    new_train = {new.image_path(r).name for r in range(new.num_images) if new.is_train[r]}
    assert old_train == new_train
    assert len(new_files) - len(old_files) == 3 * SMALL["num_classes"] and per_class >= 2
    assert folder_name(_small()) != folder_name(_small(extra_test_per_class=3))


def _children(pid: int) -> list[int]:
    path = Path(f"/proc/{pid}/task/{pid}/children")
    return [int(c) for c in path.read_text().split()] if path.exists() else []


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/task").exists(), reason="needs Linux /proc")
def test_generator_workers_end_when_the_generator_is_killed(tmp_path):
    """SIGKILL gives the parent no clean-up: its pool's workers used to live on (parent 1)."""
    import os
    import signal
    import subprocess
    import sys
    import time

    args = ["generate", "--preset", "synth_birds_tiny", "--out", str(tmp_path / "out"),
            "--images-per-class", "400", "--workers", "2", "--quiet"]  # fmt: skip
    code = f"import sys; from stnrepro.cli.data import main; sys.exit(main({args!r}))"
    proc = subprocess.Popen([sys.executable, "-c", code], env=os.environ.copy())
    workers: list[int] = []
    deadline = time.monotonic() + 120
    while len(workers) < 2 and proc.poll() is None and time.monotonic() < deadline:
        workers = _children(proc.pid)
        time.sleep(0.05)
    assert len(workers) >= 2, "the generator did not start its workers"
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    deadline = time.monotonic() + 20
    while any(_alive(w) for w in workers) and time.monotonic() < deadline:
        time.sleep(0.1)
    left = [w for w in workers if _alive(w)]
    for w in left:  # never leave them behind, whatever the outcome
        os.kill(w, signal.SIGKILL)
    assert not left, f"generator workers still running after their parent was killed: {left}"
