"""CUB data module: index parsing, transforms (boxes/parts stay aligned with pixels), errors."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import torch
from cub_fixture import PART_NAMES, write_tiny_cub
from PIL import Image

from stnrepro.data import cub, transforms
from stnrepro.data.cub import CUBDataModule, CUBDataset, stratified_val_split
from stnrepro.data.cub_index import CUBIndex
from stnrepro.errors import ConfigError, DataError
from stnrepro.utils.imagenet import IMAGENET_MEAN, denormalize


@pytest.fixture
def tiny(tmp_path: Path) -> Path:
    return write_tiny_cub(tmp_path / "CUB_200_2011")


def make_dm(root: Path, **kw) -> CUBDataModule:
    args = dict(num_classes=3, image_size=32, batch_size=4, num_workers=0, val_fraction=0.0)
    args.update(kw)
    return CUBDataModule(str(root), **args)


def white_extent(image: torch.Tensor) -> tuple[int, int, int, int]:
    """Pixel extent ``(c0, r0, c1, r1)`` (c1/r1 exclusive) of the white bird box."""
    grey = denormalize(image).mean(0)
    mask = grey > 0.7
    cols = torch.nonzero(mask.any(0)).flatten()
    rows = torch.nonzero(mask.any(1)).flatten()
    return int(cols[0]), int(rows[0]), int(cols[-1]) + 1, int(rows[-1]) + 1


def assert_box_matches_pixels(item: dict, size: int, tol: float = 1.5) -> None:
    x0, y0, x1, y1 = ((item["bbox"].numpy() + 1.0) / 2.0 * size).tolist()
    c0, r0, c1, r1 = white_extent(item["image"])
    assert abs(c0 - x0) <= tol and abs(c1 - x1) <= tol, (item["bbox"], (c0, c1), (x0, x1))
    assert abs(r0 - y0) <= tol and abs(r1 - y1) <= tol, (item["bbox"], (r0, r1), (y0, y1))


# --------------------------------------------------------------------------- loading


def test_index_parses_tiny_cub(tiny: Path) -> None:
    idx = CUBIndex.load(tiny)
    assert idx.root == tiny.absolute()
    assert idx.image_ids.dtype == np.int64 and idx.image_ids.tolist() == list(range(1, 13))
    assert idx.labels.dtype == np.int64 and idx.labels.tolist() == [0] * 4 + [1] * 4 + [2] * 4
    assert idx.is_train.dtype == bool and int(idx.is_train.sum()) == 6
    assert idx.class_names == ["001.Class_1", "002.Class_2", "003.Class_3"]
    assert idx.paths[0] == "001.Class_1/Class_1_0001.jpg"
    assert idx.bboxes is not None and idx.bboxes.dtype == np.float32
    np.testing.assert_allclose(idx.bboxes[0], [10, 5, 30, 20])
    assert idx.part_names == list(PART_NAMES)  # names with spaces survive
    assert idx.parts is not None and idx.parts.shape == (12, 3, 3)
    np.testing.assert_allclose(idx.parts[0], [[15, 10, 1], [35, 20, 1], [0, 0, 0]])
    assert "12 images, 3 classes, 6 train / 6 test" in idx.summary()


def test_split_lengths_and_loaders(tiny: Path) -> None:
    dm = make_dm(tiny, val_fraction=0.34, batch_size=2, eval_batch_size=5)
    dm.setup("fit")
    # 2 official train images per class -> 1 val + 1 train per class; 6 test.
    assert (len(dm.train_set), len(dm.val_set), len(dm.test_set)) == (3, 3, 6)
    assert dm.has_val and dm.num_parts == 3
    train, val, test = dm.train_dataloader(), dm.val_dataloader(), dm.test_dataloader()
    assert train.batch_size == 2 and val.batch_size == 5 and test.batch_size == 5
    assert not train.pin_memory or torch.cuda.is_available()
    assert not train.persistent_workers  # num_workers == 0
    batch = next(iter(test))
    assert batch["image"].shape == (5, 3, 32, 32) and batch["image"].dtype == torch.float32
    assert batch["label"].dtype == torch.int64 and batch["label"].tolist() == [0, 0, 1, 1, 2]
    assert batch["bbox"].shape == (5, 4) and batch["bbox"].dtype == torch.float32
    assert batch["parts"].shape == (5, 3, 3)
    assert batch["image_id"].tolist() == [3, 4, 7, 8, 11]
    assert len(next(iter(train))["label"]) == 2


def test_worker_processes(tiny: Path) -> None:
    assert make_dm(tiny, num_workers=1).train_dataloader().persistent_workers
    dm = make_dm(tiny, num_workers=1, batch_size=6, image_size=16, persistent_workers=False)
    loader = dm.train_dataloader()
    torch.manual_seed(0)
    first = next(iter(loader))
    torch.manual_seed(0)
    again = next(iter(loader))
    assert first["image"].shape == (6, 3, 16, 16)
    assert torch.equal(first["image_id"], again["image_id"])  # same seed, same shuffle
    assert torch.equal(first["bbox"], again["bbox"])  # ... and same random crops in workers


def test_val_split_deterministic_and_stratified(tmp_path: Path) -> None:
    root = write_tiny_cub(tmp_path / "c", num_classes=3, per_class=14, train_per_class=10)
    ids = []
    for seed in (0, 0, 1):
        dm = make_dm(root, val_fraction=0.2, split_seed=seed)
        dm.setup()
        idx = dm.validate()
        val_rows, train_rows = dm.val_set.rows, dm.train_set.rows
        assert np.bincount(idx.labels[val_rows], minlength=3).tolist() == [2, 2, 2]
        assert not set(val_rows) & set(train_rows)
        assert sorted([*val_rows, *train_rows]) == np.flatnonzero(idx.is_train).tolist()
        ids.append(idx.image_ids[val_rows].tolist())
    assert ids[0] == ids[1]
    assert ids[0] != ids[2]


def test_stratified_split_edge_cases() -> None:
    labels = np.array([0, 1, 1, 2, 2, 2])
    train, val = stratified_val_split(labels, np.arange(6), 0.01, seed=0)
    # class 0 has one image: kept in train; others give at least one, never all.
    assert np.bincount(labels[val], minlength=3).tolist() == [0, 1, 1]
    assert len(train) + len(val) == 6
    train, val = stratified_val_split(labels, np.arange(6), 0.9, seed=0)
    assert np.bincount(labels[train], minlength=3).tolist() == [1, 1, 1]


def test_val_fraction_zero(tiny: Path) -> None:
    dm = make_dm(tiny, val_fraction=0.0)
    dm.setup()
    assert not dm.has_val and dm.val_set is None
    assert dm.val_dataloader() == []
    assert len(dm.train_set) == 6


@pytest.mark.parametrize("value", [1.0, -0.1, 1.5])
def test_val_fraction_out_of_range(tiny: Path, value: float) -> None:
    with pytest.raises(ConfigError, match=r"data\.val_fraction="):
        make_dm(tiny, val_fraction=value)


def test_eval_item_greyscale_cmyk_and_hand_computed_box(tiny: Path) -> None:
    idx = CUBIndex.load(tiny)
    ds = CUBDataset(idx, np.arange(idx.num_images), image_size=30, train=False)
    for i in (0, 1, 5):  # 0 is greyscale ('L'), 1 is CMYK, 5 plain RGB
        item = ds[i]
        assert item["image"].shape == (3, 30, 30) and item["image"].dtype == torch.float32
        assert item["image_id"].item() == i + 1 and item["image_id"].dtype == torch.int64
        # Box (10, 5, 30, 20) in a 60x40 image: x0 = 2*10/60-1, x1 = 2*40/60-1, y: 2*5/40-1 ...
        np.testing.assert_allclose(item["bbox"], [-2 / 3, -0.75, 1 / 3, 0.25], atol=1e-6)
        # Parts (15, 10), (35, 20) visible; the invisible one stays invisible.
        np.testing.assert_allclose(
            item["parts"], [[-0.5, -0.5, 1], [35 / 30 - 1, 0.0, 1], [-1, -1, 0]], atol=1e-6
        )
        assert_box_matches_pixels(item, 30)
    with Image.open(idx.image_path(0)) as a, Image.open(idx.image_path(1)) as b:
        assert (a.mode, b.mode) == ("L", "CMYK")  # the fixture really has the odd modes
    assert ds[0]["label"].item() == 0 and ds[4]["label"].item() == 1


def test_train_forced_crop_and_flip(tiny: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    idx = CUBIndex.load(tiny)
    ds = CUBDataset(idx, np.array([4]), image_size=40, train=True, crop_scale=(0.5, 1.0))

    def force(left: float, top: float, width: float, height: float, flip: bool) -> None:
        view = transforms.View(left, top, width, height, flip)
        monkeypatch.setattr(cub, "sample_view", lambda w, h, seed, *args: view)

    force(0, 0, 40, 30, False)  # crop rows 0..30, cols 0..40 of the 60x40 image
    plain = ds[(0, 0)]
    np.testing.assert_allclose(plain["bbox"], [-0.5, -2 / 3, 1.0, 2 / 3], atol=1e-6)
    np.testing.assert_allclose(
        plain["parts"], [[-0.25, -1 / 3, 1], [0.75, 1 / 3, 1], [-1, -1, 0]], atol=1e-6
    )
    assert_box_matches_pixels(plain, 40)

    force(0, 0, 40, 30, True)
    flipped = ds[(0, 0)]
    np.testing.assert_allclose(flipped["bbox"], [-1.0, -2 / 3, 0.5, 2 / 3], atol=1e-6)
    np.testing.assert_allclose(
        flipped["parts"], [[0.25, -1 / 3, 1], [-0.75, 1 / 3, 1], [1, -1, 0]], atol=1e-6
    )
    assert torch.equal(flipped["image"], plain["image"].flip(-1))  # mirror of the same crop
    assert_box_matches_pixels(flipped, 40)

    # A crop that leaves part 1 (x=15) outside: it becomes invisible; the box is clipped.
    force(20, 0, 40, 40, False)
    item = ds[(0, 0)]
    np.testing.assert_allclose(item["bbox"], [-1.0, -0.75, 0.0, 0.25], atol=1e-6)
    assert item["parts"][:, 2].tolist() == [0.0, 1.0, 0.0]
    assert_box_matches_pixels(item, 40)


def test_hflip_false_and_no_augment_are_deterministic(tiny: Path) -> None:
    idx = CUBIndex.load(tiny)
    rows = np.arange(idx.num_images)
    no_flip = CUBDataset(idx, rows, 32, train=True, crop_scale=(0.6, 1.0), hflip=False)
    for seed in range(5):
        for i in range(4):
            parts = no_flip[(i, seed)]["parts"]
            assert parts[0, 0] < parts[1, 0]  # part 1 stays left of part 2: never mirrored
    no_aug = CUBDataset(idx, rows, 32, train=True, augment=False)
    evals = CUBDataset(idx, rows, 32, train=False)
    assert torch.equal(no_aug[3]["image"], evals[3]["image"])


@pytest.mark.parametrize("size", [(120, 80), (640, 480)])  # 640x480 -> JPEG draft at 1/8
def test_random_views_keep_box_on_bird(tmp_path: Path, size: tuple[int, int]) -> None:
    root = write_tiny_cub(tmp_path / "c", num_classes=1, per_class=3, size=size, cmyk_id=3)
    idx = CUBIndex.load(root)
    ds = CUBDataset(idx, np.arange(3), 32, train=True, crop_scale=(0.6, 1.0))
    flips = set()
    for seed in range(12):
        for i in range(3):
            item = ds[(i, seed)]
            x0, y0, x1, y1 = item["bbox"].tolist()
            assert -1 <= x0 < x1 <= 1 and -1 <= y0 < y1 <= 1
            if (x1 - x0) * 16 > 2 and (y1 - y0) * 16 > 2:  # skip slivers clipped to the edge
                assert_box_matches_pixels(item, 32)
            flips.add(item["parts"][0, 0].item() > item["parts"][1, 0].item())
    assert flips == {True, False}  # both flipped and unflipped views occurred
    assert_box_matches_pixels(CUBDataset(idx, np.arange(3), 32, train=False)[0], 32)


def test_large_jpeg_is_drafted(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """libjpeg reduced-scale decoding is actually used (the CPU speed trick)."""
    from PIL import JpegImagePlugin

    scales: list[float] = []
    original = JpegImagePlugin.JpegImageFile.draft

    def spy(self: JpegImagePlugin.JpegImageFile, mode: str, size: tuple[int, int]) -> object:
        width = self.size[0]
        result = original(self, mode, size)
        if result is not None:
            scales.append(result[1][2] / width)
        return result

    monkeypatch.setattr(JpegImagePlugin.JpegImageFile, "draft", spy)
    root = write_tiny_cub(tmp_path / "c", num_classes=1, per_class=1, size=(640, 480))
    idx = CUBIndex.load(root)
    item = CUBDataset(idx, np.arange(1), 32, train=False)[0]
    assert scales and scales[-1] == pytest.approx(1 / 8)
    assert_box_matches_pixels(item, 32)


def test_no_boxes_no_parts(tmp_path: Path) -> None:
    root = write_tiny_cub(tmp_path / "c", with_boxes=False, with_parts=False)
    dm = make_dm(root)
    idx = dm.validate()
    assert idx.bboxes is None and idx.parts is None and idx.part_names == []
    assert dm.num_parts == 0
    dm.setup()
    batch = next(iter(dm.test_dataloader()))
    assert torch.isnan(batch["bbox"]).all() and batch["parts"].shape == (4, 0, 3)


def test_denormalize_inverts_normalisation() -> None:
    rgb = Image.new("RGB", (4, 3), (200, 10, 90))
    t = transforms.to_normalised_tensor(rgb)
    back = denormalize(t)
    torch.testing.assert_close(back[:, 0, 0], torch.tensor([200, 10, 90]) / 255.0)
    batch = denormalize(torch.zeros(2, 3, 2, 2))
    torch.testing.assert_close(batch[1, :, 1, 1], torch.tensor(IMAGENET_MEAN))


# --------------------------------------------------------------------------- failures


def test_missing_root(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"data\.root=.*nope: directory not found"):
        make_dm(tmp_path / "nope").validate()
    with pytest.raises(DataError, match="directory not found"):
        CUBIndex.load(tmp_path / "nope")


def test_root_one_level_too_high(tiny: Path) -> None:
    with pytest.raises(DataError, match="CUB_200_2011") as err:
        make_dm(tiny.parent).validate()
    assert f"data.root={tiny}" in str(err.value)


@pytest.mark.parametrize("name", ["images.txt", "classes.txt", "train_test_split.txt"])
def test_missing_required_file(tiny: Path, name: str) -> None:
    (tiny / name).unlink()
    with pytest.raises(DataError, match="file not found") as err:
        CUBIndex.load(tiny, check_images=True)
    assert str(err.value).startswith(str(tiny / name))


def test_missing_images_dir_and_half_parts(tiny: Path) -> None:
    (tiny / "parts" / "part_locs.txt").unlink()
    with pytest.raises(DataError, match=re.escape("part_locs.txt: file not found")):
        CUBIndex.load(tiny, check_images=True)
    (tiny / "images").rename(tiny / "imgs")
    with pytest.raises(DataError, match="images: directory not found"):
        CUBIndex.load(tiny, check_images=True)


BAD_LINES = [
    # (file, line, text, expected message after "<root>/<file>")
    ("images.txt", 3, "abc", ":3: expected '<image_id> <path>', got 'abc'"),
    ("images.txt", 3, "x3 a.jpg", ":3: expected '<image_id> <path>', got 'x3 a.jpg'"),
    ("images.txt", 4, "2 001.Class_1/Class_1_0002.jpg", ":4: duplicate image id 2 (first"),
    ("images.txt", 2, "2 ../../etc/passwd", ":2: image path must be relative"),
    ("image_class_labels.txt", 5, "5 7", ":5: class id 7 outside 1..3"),
    ("image_class_labels.txt", 5, "5 0", ":5: class id 0 outside 1..3"),
    ("image_class_labels.txt", 5, "5 1 1", ":5: expected '<image_id> <class_id>', got '5 1 1'"),
    ("image_class_labels.txt", 6, "99 1", ":6: image id 99 is not listed in images.txt"),
    ("image_class_labels.txt", 6, "5 1", ":6: duplicate image id 5 (first at line 5)"),
    ("train_test_split.txt", 12, None, ": 1 image id(s) from images.txt are missing (e.g. 12); is"),
    ("train_test_split.txt", 2, "2 2", ":2: expected is_training_image 0 or 1, got 2"),
    ("classes.txt", 2, "5 002.Class_2", ":2: class id 5 outside 1..3"),
    ("bounding_boxes.txt", 7, "7 1.0 x 3 4", ":7: expected '<image_id> <x> <y> <width> <height>'"),
    ("bounding_boxes.txt", 7, "7 1.0 nan 3 4", ":7: expected '<image_id> <x> <y> <width>"),
    ("bounding_boxes.txt", 7, "7 1.0 2.0 0 4", ":7: box width and height must be > 0"),
    ("bounding_boxes.txt", 12, None, ": 1 image id(s) from images.txt are missing (e.g. 12)"),
    ("parts/part_locs.txt", 4, "2 1 3.0 4.0", ":4: expected '<image_id> <part_id> <x> <y>"),
    ("parts/part_locs.txt", 4, "2 9 3.0 4.0 1", ":4: part id 9 outside 1..3"),
    ("parts/part_locs.txt", 4, "2 1 3.0 4.0 2", ":4: expected visible 0 or 1, got 2"),
    ("parts/part_locs.txt", 36, None, ": 1 (image, part) entries are missing (e.g. image id 12"),
]


@pytest.mark.parametrize(("name", "lineno", "text", "fragment"), BAD_LINES)
def test_bad_index_lines(
    tmp_path: Path, name: str, lineno: int, text: str | None, fragment: str
) -> None:
    root = write_tiny_cub(tmp_path / "CUB_200_2011", bad_line=(name, lineno, text))
    with pytest.raises(DataError) as err:
        CUBIndex.load(root)
    message = str(err.value)
    assert message.startswith(f"{root / name}{fragment}"), message
    assert "\n" not in message


def test_num_classes_mismatch(tiny: Path) -> None:
    with pytest.raises(ConfigError) as err:
        make_dm(tiny, num_classes=200).validate()
    assert str(err.value) == f"data.num_classes=200 but {tiny / 'classes.txt'} lists 3 classes"


@pytest.mark.parametrize("damage", ["truncate", "garbage", "delete"])
def test_unreadable_image_names_path(tiny: Path, damage: str) -> None:
    idx = CUBIndex.load(tiny)
    path = idx.image_path(5)
    data = path.read_bytes()
    if damage == "truncate":
        path.write_bytes(data[: len(data) // 2])
        reason = "truncated"
    elif damage == "garbage":
        path.write_bytes(b"this is not a jpeg")
        reason = "cannot identify image file"
    else:
        path.unlink()
        reason = "No such file or directory"
    ds = CUBDataset(idx, np.arange(idx.num_images), 16, train=False)
    ds[4]  # neighbours still load
    with pytest.raises(DataError) as err:
        ds[5]
    message = str(err.value)
    assert message.startswith(f"{path}: cannot read image ("), message
    assert reason.lower() in message.lower(), message
    assert "\n" not in message


@pytest.mark.parametrize(("flag", "which"), [(1, "test"), (0, "training")])
def test_split_without_training_or_test_images(tmp_path: Path, flag: int, which: str) -> None:
    root = write_tiny_cub(tmp_path / "CUB_200_2011", train_per_class=4 * flag)
    with pytest.raises(DataError) as err:
        make_dm(root).validate()
    assert str(err.value) == (
        f"{root / 'train_test_split.txt'}: no {which} images (all 12 have is_training_image "
        f"{flag}); expected both training (1) and test (0) images"
    )


def test_box_outside_its_image_needs_the_header(tmp_path: Path) -> None:
    """x=60 is just right of a 60x40 image: only the image's size tells it is not the bird."""
    root = write_tiny_cub(
        tmp_path / "CUB_200_2011", bad_line=("bounding_boxes.txt", 7, "7 60 5 9 9")
    )
    assert CUBIndex.load(root).bboxes[6].tolist() == [60, 5, 9, 9]  # no headers read
    with pytest.raises(DataError) as err:
        make_dm(root).validate()
    assert str(err.value) == (
        f"{root / 'bounding_boxes.txt'}:7: box (x=60, y=5, w=9, h=9) lies outside the image "
        "60x40 of image id 7; expected a box overlapping it"
    )


def test_box_left_of_every_image_is_refused_without_headers(tmp_path: Path) -> None:
    root = write_tiny_cub(
        tmp_path / "CUB_200_2011", bad_line=("bounding_boxes.txt", 3, "3 -20 5 9 9")
    )
    with pytest.raises(DataError, match=r"bounding_boxes\.txt:3: box \(x=-20, .* lies outside"):
        CUBIndex.load(root)


def test_box_partly_outside_is_kept(tmp_path: Path) -> None:
    root = write_tiny_cub(
        tmp_path / "CUB_200_2011", bad_line=("bounding_boxes.txt", 3, "3 50 30 20 20")
    )
    assert make_dm(root).validate().bboxes[2].tolist() == [50, 30, 20, 20]


def test_missing_images_are_listed_with_their_count_before_training(tiny: Path) -> None:
    index = CUBIndex.load(tiny)
    for row in (11, 5, 7):  # test images of classes 3 and 2
        index.image_path(row).unlink()
    with pytest.raises(DataError) as err:
        make_dm(tiny).validate()
    first = ", ".join(index.paths[r] for r in (5, 7, 11))
    assert str(err.value) == (
        f"{tiny / 'images.txt'}: 3 of 12 listed image file(s) not found under "
        f"{tiny / 'images'} (first: {first})"
    )


def test_unreadable_image_header_is_refused_before_training(tiny: Path) -> None:
    path = CUBIndex.load(tiny).image_path(9)
    path.write_bytes(b"this is not a jpeg")
    with pytest.raises(DataError) as err:
        make_dm(tiny).validate()
    message = str(err.value)
    assert message.startswith(f"{tiny / 'images.txt'}: 1 of 12 listed image(s) cannot be read ")
    assert f"(first: {path}: cannot identify image file" in message and "\n" not in message


def test_a_16_bit_greyscale_png_is_scaled_to_8_bits_not_clipped_to_white(tmp_path: Path) -> None:
    """PIL's own conversion of a 16-bit greyscale image clips every value above 255."""
    path = tmp_path / "grey16.png"
    Image.fromarray(np.full((40, 48), 32768, dtype=np.uint16)).save(path)
    assert Image.open(path).mode.startswith("I")
    img, _ = transforms.load_view(path, 16, transforms.full_view)
    values = np.asarray(img)
    assert values.shape == (16, 16, 3) and np.all(np.abs(values.astype(int) - 128) <= 1)


def test_a_fifo_in_place_of_an_image_is_refused_without_opening_it(tiny: Path) -> None:
    """Opening a FIFO blocks until someone writes to it: a check or a training run hung."""
    import os

    image = sorted((tiny / "images").rglob("*.jpg"))[0]
    image.unlink()
    os.mkfifo(image)
    with pytest.raises(DataError, match="not a regular file"):
        transforms.load_view(image, 16, transforms.full_view)
    with pytest.raises(DataError, match=r"cannot be read \(first: .*not a regular file"):
        CUBIndex.load(tiny, check_images=True)
