"""Attention boxes, metrics, figure, callback and the stn-attention command."""

from __future__ import annotations

import io
import math
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import pytorch_lightning as pl
import torch
from conftest import compose_train
from cub_fixture import PART_NAMES as FIXTURE_PARTS
from cub_fixture import write_tiny_cub
from hydra.utils import instantiate
from omegaconf import OmegaConf
from pytorch_lightning.loggers import WandbLogger

from stnrepro.attention.figures import render_attention_figure
from stnrepro.attention.metrics import (
    AttentionMetrics,
    box_iou,
    part_groups,
    points_in_boxes,
)
from stnrepro.cli.attention import main as stn_attention
from stnrepro.data import synth_draw
from stnrepro.data.transforms import full_view, map_box
from stnrepro.lightning.callbacks import AttentionFigureCallback
from stnrepro.models.samplers import crop_boxes, sample
from stnrepro.models.spatial_transformer import attention_theta

REPO = Path(__file__).resolve().parents[1]
CUB_PARTS = (
    "back", "beak", "belly", "breast", "crown", "forehead", "left eye", "left leg", "left wing",
    "nape", "right eye", "right leg", "right wing", "tail", "throat",
)  # fmt: skip


def att(s: float, tx: float, ty: float) -> torch.Tensor:
    """One attention theta (2, 3)."""
    return attention_theta(torch.tensor(s), torch.tensor(tx), torch.tensor(ty))


# --------------------------------------------------------------------------- boxes


@pytest.mark.parametrize(
    ("s", "tx", "ty", "box", "cols", "rows"),
    [
        (0.5, 0.5, -0.5, (0.0, -1.0, 1.0, 0.0), (4, 8), (0, 4)),  # top-right quadrant
        (0.25, -0.75, 0.75, (-1.0, 0.5, -0.5, 1.0), (0, 2), (6, 8)),  # bottom-left 2x2
        (0.5, 0.0, 0.0, (-0.5, -0.5, 0.5, 0.5), (2, 6), (2, 6)),  # centre
        (1.0, 0.0, 0.0, (-1.0, -1.0, 1.0, 1.0), (0, 8), (0, 8)),  # identity
    ],
)
def test_crop_box_matches_the_pixels_the_sampler_takes(s, tx, ty, box, cols, rows):
    theta = att(s, tx, ty)
    got = crop_boxes(theta)
    assert torch.allclose(got, torch.tensor(box)), got
    # Box edges -> pixel edges on an 8x8 image (-1/+1 are the outer pixel EDGES).
    x0, y0, x1, y1 = ((got + 1) / 2 * 8).tolist()
    assert (round(x0), round(x1)) == cols and (round(y0), round(y1)) == rows
    image = torch.arange(64, dtype=torch.float32).view(1, 1, 8, 8)
    crop = sample(image, theta[None], cols[1] - cols[0])
    assert torch.allclose(crop[0, 0], image[0, 0, rows[0] : rows[1], cols[0] : cols[1]])


def test_dataset_box_and_crop_box_share_one_convention():
    # A CUB pixel box (x, y, w, h) covering columns 4..7, rows 0..3 of an 8x8 image (eval view)
    gt = torch.from_numpy(map_box(np.array([4.0, 0.0, 4.0, 4.0]), full_view(8, 8)))
    assert torch.allclose(gt, torch.tensor([0.0, -1.0, 1.0, 0.0]))
    assert box_iou(crop_boxes(att(0.5, 0.5, -0.5)), gt) == pytest.approx(1.0)


def test_box_iou_known_values():
    a = torch.tensor([0.0, 0.0, 2.0, 2.0])
    assert box_iou(a, a) == pytest.approx(1.0)
    assert box_iou(a, torch.tensor([1.0, 0.0, 3.0, 2.0])) == pytest.approx(2 / 6)
    assert box_iou(a, torch.tensor([2.0, 0.0, 3.0, 2.0])) == 0.0  # touching edge
    assert box_iou(a, torch.tensor([5.0, 5.0, 6.0, 6.0])) == 0.0  # disjoint
    assert box_iou(a, torch.tensor([1.0, 1.0, 1.0, 1.0])) == 0.0  # empty box
    batch = box_iou(a.expand(3, 2, 4), torch.tensor([0.0, 0.0, 1.0, 2.0]))
    assert batch.shape == (3, 2) and torch.allclose(batch, torch.full((3, 2), 0.5))


def test_points_in_boxes_is_closed():
    box = torch.tensor([0.0, -1.0, 1.0, 0.0])
    pts = torch.tensor([[0.5, -0.5], [0.0, 0.0], [1.0, -1.0], [-0.01, -0.5], [0.5, 0.01]])
    assert points_in_boxes(pts, box).tolist() == [True, True, True, False, False]


# --------------------------------------------------------------------------- part groups


def test_part_groups_real_cub_names():
    groups = part_groups(CUB_PARTS)
    names = [CUB_PARTS[j] for j in groups["head"]]
    assert sorted(names) == ["beak", "crown", "forehead", "left eye", "nape", "right eye"]
    names = [CUB_PARTS[j] for j in groups["body"]]
    assert sorted(names) == ["back", "belly", "breast", "left wing", "right wing", "tail"]
    assert list(groups)[2:] == [n.replace(" ", "_") for n in CUB_PARTS]
    assert groups["left_eye"] == [CUB_PARTS.index("left eye")]
    for leg_or_throat in ("left leg", "right leg", "throat"):  # in neither group
        j = CUB_PARTS.index(leg_or_throat)
        assert j not in groups["head"] and j not in groups["body"]


def test_part_groups_synthetic_names_match_the_generator_groups():
    names = synth_draw.PART_NAMES
    groups = part_groups(names)
    assert {names[j] for j in groups["head"]} == set(synth_draw.HEAD_PARTS)
    assert {names[j] for j in groups["body"]} == set(synth_draw.BODY_PARTS)
    # The synthetic parts "head" and "body" must not shadow the groups.
    assert groups["head_part"] == [names.index("head")]
    assert groups["body_part"] == [names.index("body")]
    assert len(groups) == 2 + len(names)


def test_part_groups_odd_names():
    groups = part_groups(["Left  Eye", "center", "left eye", "Tail!"])
    assert groups == {
        "head": [0, 2],
        "body": [3],
        "left_eye": [0],
        "center_part": [1],
        "left_eye_2": [2],
        "tail": [3],
    }
    assert part_groups([]) == {"head": [], "body": []}


# --------------------------------------------------------------------------- metrics

PARTS = ("beak", "left wing", "right eye")  # head, body, head
TOP_RIGHT, BOTTOM_LEFT = (0.5, 0.5, -0.5), (0.5, -0.5, 0.5)


def constructed_batch() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Image 0: bird = top-right quadrant, beak and eye there, wing bottom-left (visible).
    Image 1: no box (NaN), beak top-right, wing invisible but inside ST0's crop."""
    theta = torch.stack([att(*TOP_RIGHT), att(*BOTTOM_LEFT)])[None].repeat(2, 1, 1, 1)
    bbox = torch.tensor([[0.0, -1.0, 1.0, 0.0], [math.nan] * 4])
    parts = torch.tensor(
        [
            [[0.6, -0.6, 1.0], [-0.5, 0.5, 1.0], [0.2, -0.9, 1.0]],
            [[0.5, -0.5, 1.0], [0.5, -0.5, 0.0], [9.0, 9.0, 0.0]],
        ]
    )
    return theta, bbox, parts


def test_metrics_are_one_or_zero_on_constructed_cases():
    metric = AttentionMetrics(2, PARTS)
    metric.update(*constructed_batch())
    got = {k: float(v) for k, v in metric.compute().items()}
    expected_st0 = {"iou": 1.0, "hit_center": 1.0, "hit_head": 1.0, "hit_body": 0.0,
                    "hit_beak": 1.0, "hit_left_wing": 0.0, "hit_right_eye": 1.0}  # fmt: skip
    expected_st1 = {"iou": 0.0, "hit_center": 0.0, "hit_head": 0.0, "hit_body": 1.0,
                    "hit_beak": 0.0, "hit_left_wing": 1.0, "hit_right_eye": 0.0}  # fmt: skip
    expected = {f"st0/{k}": v for k, v in expected_st0.items()}
    expected |= {f"st1/{k}": v for k, v in expected_st1.items()}
    assert got == expected


def test_metrics_average_over_visible_instances_and_accumulate():
    theta, bbox, parts = constructed_batch()
    metric = AttentionMetrics(2, PARTS)
    metric.update(theta[:1], bbox[:1], parts[:1])
    metric.update(theta[1:], bbox[1:], parts[1:])
    half = AttentionMetrics(2, PARTS)
    half.update(theta, bbox, parts)
    assert {k: float(v) for k, v in metric.compute().items()} == {
        k: float(v) for k, v in half.compute().items()
    }
    # A third image with the bird bottom-left and every part there: rates become averages.
    metric.update(
        theta[:1],
        torch.tensor([[-1.0, 0.0, 0.0, 1.0]]),
        torch.tensor([[[-0.5, 0.5, 1.0], [-0.5, 0.5, 1.0], [-0.5, 0.5, 1.0]]]),
    )
    got = metric.compute()
    assert float(got["st0/iou"]) == pytest.approx(0.5)  # boxes: image 0 and 2 only
    assert float(got["st1/hit_center"]) == pytest.approx(0.5)
    # head instances visible: beak x3, eye x2 -> ST1 holds image 2's beak and eye: 2/5
    assert float(got["st1/hit_head"]) == pytest.approx(2 / 5)
    assert float(got["st0/hit_body"]) == pytest.approx(0.0)  # wings: image 0 and 2


def test_nan_boxes_and_invisible_parts_give_nan_not_zero():
    metric = AttentionMetrics(1, ["tail"])
    metric.update(
        att(*TOP_RIGHT)[None, None],
        torch.full((1, 4), math.nan),
        torch.tensor([[[0.5, -0.5, 0.0]]]),
    )
    got = metric.compute()
    assert set(got) == {"st0/iou", "st0/hit_center", "st0/hit_body", "st0/hit_tail"}
    assert all(math.isnan(float(v)) for v in got.values())


def test_metrics_without_parts_and_bad_shapes():
    metric = AttentionMetrics(1, [])
    metric.update(
        att(*TOP_RIGHT)[None, None], torch.tensor([[0.0, -1.0, 1.0, 0.0]]), torch.zeros(1, 0, 3)
    )
    assert {k: float(v) for k, v in metric.compute().items()} == {
        "st0/iou": 1.0,
        "st0/hit_center": 1.0,
    }
    with pytest.raises(ValueError, match="parts"):
        metric.update(att(*TOP_RIGHT)[None, None], torch.zeros(1, 4), torch.zeros(1, 2, 3))
    with pytest.raises(ValueError, match="theta"):
        metric.update(torch.zeros(1, 2, 2, 3), torch.zeros(1, 4), torch.zeros(1, 0, 3))


def test_a_crop_reaching_outside_the_image_is_measured_clipped_to_it():
    # Full-size crop shifted right: it spans x in [-0.5, 1.5], half a unit of it border padding.
    # Clipped to the image it is the box x in [-0.5, 1], which is exactly the bird's box
    # (IoU 1); the unclipped box would give 3 / 4.
    theta = att(1.0, 0.5, 0.0)[None, None]
    assert torch.allclose(crop_boxes(theta), torch.tensor([-0.5, -1.0, 1.5, 1.0]))
    metric = AttentionMetrics(1, [])
    metric.update(theta, torch.tensor([[-0.5, -1.0, 1.0, 1.0]]), torch.zeros(1, 0, 3))
    assert float(metric.compute()["st0/iou"]) == pytest.approx(1.0)


def test_metric_states_reduce_by_sum():
    metric = AttentionMetrics(2, PARTS)
    assert all(fx == "sum" or getattr(fx, "__name__", "") == "dim_zero_sum"
               for fx in metric._reductions.values())  # fmt: skip


# --------------------------------------------------------------------------- figure


def test_figure_renders_png_with_one_row_per_image():
    torch.manual_seed(0)
    theta = torch.stack([att(*TOP_RIGHT), att(0.7, -0.2, 0.3)])[None].repeat(2, 1, 1, 1)
    images = torch.rand(2, 3, 32, 32)
    crops = [torch.rand(2, 3, 16, 16), torch.rand(2, 3, 16, 16)]
    bbox = torch.tensor([[0.0, -1.0, 1.0, 0.0], [math.nan] * 4])
    fig = render_attention_figure(images, theta, crops, bbox=bbox)
    assert len(fig.axes) == 2 * 3
    assert len(fig.axes[0].patches) == 3 and len(fig.axes[3].patches) == 2  # GT box only row 0
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    assert buf.getvalue().startswith(b"\x89PNG") and len(buf.getvalue()) > 1000
    with pytest.raises(ValueError, match="crops"):
        render_attention_figure(images, theta, crops[:1])


# --------------------------------------------------------------------------- fit, callback, script


def tiny_overrides(cub_root: Path) -> list[str]:
    return [
        "data=cub", f"data.root={cub_root}", "data.num_classes=3", "data.image_size=32",
        "data.batch_size=4", "data.num_workers=0", "data.val_fraction=0.2",
        "model.backbone=small", "model.pretrained=false", "model.num_transformers=2",
        "model.crop_size=16", "trainer=cpu", "logger=none",
    ]  # fmt: skip


@pytest.fixture(scope="module")
def fitted(tmp_path_factory) -> SimpleNamespace:
    """One tiny 2-epoch fit with the callback; checkpoint + config laid out like a run dir."""
    tmp = tmp_path_factory.mktemp("attention")
    cub_root = write_tiny_cub(tmp / "CUB_200_2011", num_classes=3, per_class=6, size=(48, 40))
    run_dir = tmp / "run"
    cfg = compose_train(tiny_overrides(cub_root), run_dir)
    pl.seed_everything(0)
    datamodule = instantiate(cfg.data)
    model = instantiate(cfg.model)
    callback = AttentionFigureCallback(num_images=3, every_n_epochs=1)
    trainer = pl.Trainer(
        max_epochs=2, accelerator="cpu", logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, default_root_dir=str(run_dir),
        callbacks=[callback],
    )  # fmt: skip
    trainer.fit(model, datamodule=datamodule)
    ckpt = run_dir / "checkpoints" / "last.ckpt"
    trainer.save_checkpoint(ckpt)
    (run_dir / ".hydra").mkdir(parents=True)
    OmegaConf.save(cfg, run_dir / ".hydra" / "config.yaml")
    return SimpleNamespace(
        run_dir=run_dir, ckpt=ckpt, cub_root=cub_root, trainer=trainer, model=model,
        callback=callback, datamodule=datamodule,
    )  # fmt: skip


def test_callback_writes_one_png_per_epoch_on_a_fixed_set(fitted):
    out = fitted.run_dir / "attention"
    assert sorted(p.name for p in out.iterdir()) == ["epoch000.png", "epoch001.png"]
    assert fitted.callback.saved == [out / "epoch000.png", out / "epoch001.png"]  # no repeat
    assert all(p.read_bytes().startswith(b"\x89PNG") for p in fitted.callback.saved)
    batch = fitted.callback._batch
    val_ids = [int(fitted.datamodule.val_set[i]["image_id"]) for i in range(3)]
    assert batch["image"].shape == (3, 3, 32, 32) and batch["image_id"].tolist() == val_ids


def test_callback_leaves_rng_and_module_modes_alone(fitted):
    model, cb = fitted.model, fitted.callback
    model.train()
    model.net.loc_trunk.eval()  # e.g. a frozen part: its mode must survive
    modes = {name: m.training for name, m in model.named_modules()}
    rng = torch.get_rng_state()
    path = cb.render(fitted.trainer, model, epoch=41)
    assert path == fitted.run_dir / "attention" / "epoch041.png" and path.exists()
    assert torch.equal(torch.get_rng_state(), rng)
    assert {name: m.training for name, m in model.named_modules()} == modes
    assert cb.render(fitted.trainer, model, epoch=41) is None  # once per epoch


def test_callback_logs_to_wandb_and_skips_the_cnn(fitted, tmp_path):
    class RecordingWandb(WandbLogger):
        def __init__(self) -> None:  # no W&B run: only log_image is exercised
            self.calls: list[dict] = []

        def log_image(self, key, images, step=None, **kwargs):  # type: ignore[override]
            self.calls.append({"key": key, "images": images, "step": step, **kwargs})

    wandb_logger = RecordingWandb()
    trainer = SimpleNamespace(
        is_global_zero=True, default_root_dir=str(tmp_path), loggers=[wandb_logger],
        global_step=7, val_dataloaders=fitted.trainer.val_dataloaders, datamodule=None,
    )  # fmt: skip
    cb = AttentionFigureCallback(num_images=2, every_n_epochs=1)
    assert cb.render(trainer, fitted.model, epoch=0) == tmp_path / "attention" / "epoch000.png"
    (call,) = wandb_logger.calls
    assert call["key"] == "val/attention" and call["step"] == 7
    assert call["images"] == [str(tmp_path / "attention" / "epoch000.png")]  # the saved PNG
    cnn = SimpleNamespace(net=SimpleNamespace(num_transformers=0))
    assert cb.render(trainer, cnn, epoch=1) is None  # type: ignore[arg-type]


def test_show_attention_renders_and_prints_metrics(fitted, tmp_path, capsys):
    out = tmp_path / "fig.png"
    assert (
        stn_attention([str(fitted.ckpt), "--images", "2", "--out", str(out), "--device", "cpu"])
        == 0
    )
    assert out.read_bytes().startswith(b"\x89PNG")
    text = capsys.readouterr().out
    assert f"wrote {out}" in text and "test images" in text
    table = text.split("test images:\n", 1)[1].splitlines()
    assert table[0].split() == ["st0", "st1"]
    rows = {line.split()[0]: line.split()[1:] for line in table[1:]}
    assert list(rows)[:4] == ["iou", "hit_center", "hit_head", "hit_body"]
    assert {f"hit_{n.replace(' ', '_')}" for n in FIXTURE_PARTS} <= set(rows)
    assert all(0.0 <= float(v) <= 1.0 for v in rows["iou"] + rows["hit_center"])


def test_show_attention_data_root_override_and_default_out(fitted, tmp_path, capsys):
    moved = write_tiny_cub(tmp_path / "elsewhere", num_classes=3, per_class=6, size=(48, 40))
    cfg = OmegaConf.load(fitted.run_dir / ".hydra" / "config.yaml")
    cfg.data.root = str(tmp_path / "gone")
    run_dir = tmp_path / "run2"
    (run_dir / "checkpoints").mkdir(parents=True)
    (run_dir / ".hydra").mkdir()
    OmegaConf.save(cfg, run_dir / ".hydra" / "config.yaml")
    ckpt = run_dir / "checkpoints" / "last.ckpt"
    ckpt.write_bytes(fitted.ckpt.read_bytes())
    argv = [str(ckpt), "--images", "1", "--no-metrics", "--device", "cpu"]
    assert stn_attention(argv) == 2
    assert "gone" in capsys.readouterr().err
    assert stn_attention([*argv, "--data-root", str(moved)]) == 0
    assert (run_dir / "attention" / "test.png").exists()


@pytest.mark.parametrize("case", ["no_ckpt", "no_config", "zero_images", "not_a_ckpt"])
def test_show_attention_errors_are_one_line_exit_2(fitted, tmp_path, capsys, case):
    argv = [str(fitted.ckpt)]
    if case == "no_ckpt":
        argv = [str(tmp_path / "missing.ckpt")]
    elif case == "no_config":
        lonely = tmp_path / "checkpoints" / "last.ckpt"
        lonely.parent.mkdir()
        lonely.write_bytes(b"x")
        argv = [str(lonely)]
    elif case == "zero_images":
        argv += ["--images", "0"]
    else:
        bad = fitted.run_dir / "checkpoints" / "junk.ckpt"
        bad.write_bytes(b"not a checkpoint")
        argv = [str(bad)]
    assert stn_attention(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1, err


def test_show_attention_resolves_paths_as_the_run_did(fitted, tmp_path, capsys, monkeypatch):
    """config.yaml is saved unresolved: data_dir = ${oc.env:STNREPRO_ROOT,.}/data, relative to
    the job's folder, which comes from the run's .hydra/hydra.yaml, not from where we are."""
    monkeypatch.delenv("STNREPRO_ROOT", raising=False)
    run_dir, job_cwd = tmp_path / "run", tmp_path / "job_cwd"
    synth = [o for o in tiny_overrides(fitted.cub_root) if not o.startswith("data.root")]
    synth[0] = "data=synth_birds_tiny"
    synth += ["data.images_per_class=4", "data.image_width=64", "data.image_height=48",
              "data.gen_workers=1", "+data.gen_progress=false"]  # fmt: skip
    cfg = compose_train(synth, run_dir)
    assert "${oc.env:STNREPRO_ROOT,.}" in OmegaConf.to_yaml(cfg.paths)  # still unresolved
    (run_dir / ".hydra").mkdir(parents=True)
    OmegaConf.save(cfg, run_dir / ".hydra" / "config.yaml")
    runtime = {"cwd": str(job_cwd), "output_dir": str(run_dir)}
    OmegaConf.save({"hydra": {"runtime": runtime}}, run_dir / ".hydra" / "hydra.yaml")
    (run_dir / "checkpoints").mkdir()
    ckpt = run_dir / "checkpoints" / "last.ckpt"
    ckpt.write_bytes(fitted.ckpt.read_bytes())
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    assert stn_attention([str(ckpt), "--images", "2", "--device", "cpu"]) == 0
    assert [p.name.split("-")[0] for p in (job_cwd / "data").iterdir() if p.is_dir()] == [
        "synth_birds_tiny"
    ]
    assert list(elsewhere.iterdir()) == []
    text = capsys.readouterr().out
    assert (run_dir / "attention" / "test.png").exists()
    assert "attention metrics over 6 test images" in text and "hit_head_part" in text
