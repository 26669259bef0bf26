"""End to end through the Hydra configs: compose, train a few steps on CPU, read the record."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import torch
from conftest import compose_train
from cub_fixture import write_tiny_cub
from hydra.utils import instantiate

from stnrepro.config import config_dir
from stnrepro.errors import ConfigError, DataError
from stnrepro.models.backbones import SPECS
from stnrepro.records.reader import read_record_file
from stnrepro.train import train

EXPERIMENTS = sorted(p.stem for p in (config_dir() / "experiment").glob("*.yaml"))


@pytest.fixture(scope="module")
def cub_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("data") / "CUB_200_2011"
    return write_tiny_cub(root, num_classes=3, per_class=6, size=(48, 40))


def tiny_overrides(cub_root: Path, n: int = 2) -> list[str]:
    return [
        "data=cub",
        f"data.root={cub_root}",
        "data.num_classes=3",
        "data.image_size=32",
        "data.batch_size=4",
        "data.num_workers=0",
        "data.val_fraction=0.2",
        "model.backbone=small",
        "model.pretrained=false",
        f"model.num_transformers={n}",
        "model.crop_size=16",
        "trainer=cpu",
        "trainer.max_epochs=2",
        "trainer.log_every_n_steps=1",
        "trainer.enable_progress_bar=false",
        "logger=csv",
    ]


@pytest.mark.parametrize("n", [0, 2])
def test_short_cpu_run_writes_a_record_with_real_numbers(cub_root, make_cfg, n):
    cfg = make_cfg(tiny_overrides(cub_root, n))
    record = train(cfg)
    path = Path(cfg.paths.output_dir) / "metrics.json"
    assert json.loads(path.read_text()) == record
    assert record["status"] == "finished" and record["error"] is None
    assert record["cell"] == {
        "dataset": "cub", "backbone": "small", "pretrained": False, "image_size": 32,
        "crop_size": 16, "num_transformers": n, "transform": "attention", "seed": 0,
    }  # fmt: skip
    metrics = record["metrics"]
    for key in ("val/acc", "val/loss", "test/acc", "test/loss"):
        assert isinstance(metrics[key], float), key
    assert 0.0 <= metrics["test/acc"] <= 1.0 and metrics["test/loss"] > 0
    assert record["run_name"] == ("CNN-32-s0" if n == 0 else "2xST-32-s0")
    assert record["logger"]["name"] == "csv"
    assert (Path(cfg.paths.output_dir) / "checkpoints" / "last.ckpt").exists()
    if n:
        assert 0.0 <= metrics["test/st0/outside"] <= 1.0
        assert metrics["test/st0/s_mean"] == pytest.approx(0.5)
        for key in ("test/st0/iou", "test/st1/hit_center", "test/st1/hit_head", "val/st0/iou"):
            assert 0.0 <= metrics[key] <= 1.0, key
        assert list((Path(cfg.paths.output_dir) / "attention").glob("epoch*.png"))
        logged = (Path(cfg.paths.output_dir) / "csv" / "metrics.csv").read_text()
        assert "train/st1/ty_mean" in logged and "train/loss_step" in logged


def test_bad_value_fails_before_training_and_is_recorded(cub_root, make_cfg):
    cfg = make_cfg([*tiny_overrides(cub_root), "model.fixed_scale=1.5"])
    with pytest.raises(ConfigError, match=r"model\.fixed_scale=1\.5"):
        train(cfg)
    record = json.loads((Path(cfg.paths.output_dir) / "metrics.json").read_text())
    assert record["status"] == "failed" and "model.fixed_scale=1.5" in record["error"]
    assert record["cell"]["num_transformers"] == 2 and record["metrics"] == {}
    assert not (Path(cfg.paths.output_dir) / "checkpoints").exists()


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_every_experiment_file_composes(experiment, tmp_path):
    cfg = compose_train([f"experiment={experiment}"], tmp_path)
    assert cfg.model.crop_size > 0 and cfg.data.image_size > 0
    assert cfg.data.name and cfg.model.backbone in SPECS


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_every_experiment_builds_its_optimizer_and_schedule(experiment, tmp_path):
    """The schedule of each experiment is a whole option of model/scheduler: no key of
    another scheduler's left over (MultiStepLR given cosine's T_max), none missing."""
    cfg = compose_train([f"experiment={experiment}"], tmp_path)
    params = [torch.nn.Parameter(torch.zeros(1))]
    optimizer = instantiate(cfg.model.optimizer)(params=params)
    scheduler = instantiate(cfg.model.scheduler)
    kwargs = {"total_steps": 10} if cfg.model.scheduler_interval == "step" else {}
    assert scheduler(optimizer=optimizer, **kwargs).optimizer is optimizer


def test_debug_tiny_shortens_any_experiment(tmp_path):
    cfg = compose_train(["experiment=cub_4st_448", "debug=tiny"], tmp_path)
    assert (cfg.trainer.max_epochs, cfg.trainer.accelerator, cfg.threads) == (1, "cpu", 1)
    assert cfg.data.num_workers == 0 and cfg.model.num_transformers == 4  # the experiment's


@pytest.mark.parametrize(
    "name,size,n", [("cub_cnn_224", 224, 0), ("cub_2st_224", 224, 2), ("cub_2st_448", 448, 2),
                    ("cub_4st_448", 448, 4)],
)  # fmt: skip
def test_table3_rows_are_the_papers_settings(name, size, n, tmp_path):
    cfg = compose_train([f"experiment={name}"], tmp_path)
    assert (cfg.data.name, cfg.data.image_size, cfg.model.num_transformers) == ("cub", size, n)
    assert (cfg.model.backbone, cfg.model.pretrained, cfg.model.crop_size) == (
        "inception_v3", True, 224,
    )  # fmt: skip
    assert cfg.model.transform == "attention" and cfg.model.fixed_scale == 0.5


def test_cli_refuses_bad_input_with_one_line(tmp_path, stn_train):
    proc = stn_train(["data=cub", f"data.root={tmp_path}/nope", "model.backbone=vgg",
                      f"hydra.run.dir={tmp_path}/run", "logger=none"])  # fmt: skip
    assert proc.returncode == 2
    assert proc.stderr.splitlines() == [
        "error: model.backbone='vgg': expected one of inception_v3, resnet50, small, digit_cnn, "
        "digit_fcn"
    ]
    assert (proc.stdout + proc.stderr).count("vgg") == 1  # said once, not also as a log line


def test_model_errors_raised_while_building_are_one_line_before_data_is_read(tmp_path, stn_train):
    """A model value only the constructor can judge is one line, not Hydra's wrapped traceback."""
    proc = stn_train([
        "data=cub", f"data.root={tmp_path}/nope", "model.backbone=small",
        "model.pretrained=true", f"hydra.run.dir={tmp_path}/run", "logger=none",
    ])  # fmt: skip
    assert proc.returncode == 2
    assert proc.stderr.splitlines() == [
        "error: model.pretrained=true: backbone 'small' has no ImageNet weights (expected "
        "model.pretrained=false, or backbone inception_v3/resnet50)"
    ]


def test_model_values_are_validated_once_per_run(cub_root, make_cfg, monkeypatch):
    import stnrepro.models.st_cnn as st_cnn
    import stnrepro.run.fit as train_module

    calls = []
    check = st_cnn.validate_model_args

    def counted(*args, **kwargs):
        calls.append(1)
        return check(*args, **kwargs)

    monkeypatch.setattr(st_cnn, "validate_model_args", counted)
    monkeypatch.setattr(train_module, "validate_model_args", counted, raising=False)
    cfg = make_cfg([*tiny_overrides(cub_root, 2), "trainer.max_epochs=1", "test=false"])
    assert train(cfg)["status"] == "finished"
    assert len(calls) == 1


def test_logger_summary_gets_the_finished_record(cub_root, make_cfg, monkeypatch):
    """The table reads W&B runs' summary record: it must say finished, not running."""
    import stnrepro.run.fit as train_module

    seen = []
    monkeypatch.setattr(
        train_module, "log_summary", lambda logger, record: seen.append(dict(record.data))
    )
    record = train(make_cfg(tiny_overrides(cub_root, 0)))
    assert [s["status"] for s in seen] == ["finished"]
    assert seen[0]["metrics"]["test/acc"] == record["metrics"]["test/acc"]


def test_short_cpu_run_writes_predictions_matching_its_test_acc(cub_root, make_cfg):
    """predictions.csv holds every test image once; its accuracy is the record's test/acc.

    With the W&B logger (offline) the file is also an artifact of type ``predictions``, and
    the run table summarises val/acc by its maximum and test/acc by its last value.
    """
    from wandb_records import read_records

    from stnrepro.records.predictions import read_predictions

    cfg = make_cfg([*tiny_overrides(cub_root, 2)[:-1], "logger=wandb"])
    record = train(cfg)
    out = Path(cfg.paths.output_dir)
    assert record["predictions"] == "predictions.csv"
    predictions = read_predictions(out / "predictions.csv")
    test_ids = [
        int(line.split()[0])
        for line in (cub_root / "train_test_split.txt").read_text().splitlines()
        if line.split()[1] == "0"
    ]
    assert predictions.image_id.tolist() == sorted(test_ids)
    # The record vouches for the file: its sha256 and the number of images it scores.
    assert (
        record["predictions_sha256"]
        == hashlib.sha256((out / "predictions.csv").read_bytes()).hexdigest()
    )
    assert record["test_images"] == len(test_ids)
    assert predictions.accuracy == pytest.approx(record["metrics"]["test/acc"], abs=1e-6)
    assert predictions.correct_top5.all()  # 3 classes: the label is always in the top 5
    (run_file,) = out.glob("wandb/offline-run-*/run-*.wandb")
    records = read_records(run_file, wait_s=10)
    summaries = {
        r.metric.name: [f.name for f, on in r.metric.summary.ListFields() if on]
        for r in records
        if r.WhichOneof("record_type") == "metric" and r.metric.name
    }
    assert summaries["val/acc"] == ["max"] and summaries["test/acc"] == ["last"]
    artifacts = [r.artifact for r in records if r.WhichOneof("record_type") == "artifact"]
    (logged,) = [a for a in artifacts if a.type == "predictions"]
    assert [m.path for m in logged.manifest.contents] == ["predictions.csv"]


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("data.image_size=abc", "data.image_size='abc': expected an integer >= 1"),
        ("trainer.max_epochs=abc", "trainer.max_epochs='abc': expected an integer >= 1"),
        ("model.optimizer.lr=abc", "model.optimizer.lr='abc': expected a float > 0"),
        ("seed=abc", "seed='abc': expected an integer in [0, 4294967296)"),
        ("seed=4294967296", "seed=4294967296: expected an integer in [0, 4294967296)"),
        ("seed=18446744073709551616", "seed=18446744073709551616: expected an integer in [0, "
         "4294967296)"),
        ("model.optimizer.lr=0", "model.optimizer.lr=0: expected a float > 0"),
        ("model.num_transformers=-1", "model.num_transformers=-1: expected an integer >= 0"),
        ("trainer.max_epochs=1.5", "trainer.max_epochs=1.5: expected an integer >= 1"),
        ("trainer.max_epochs=0", "trainer.max_epochs=0: expected an integer >= 1"),
        ("trainer.max_epochs=-1", "trainer.max_epochs=-1: expected an integer >= 1"),
        ("data.batch_size=2.0", "data.batch_size=2.0: expected an integer >= 1"),
        ("model.num_transformers=true", "model.num_transformers=True: expected an integer >= 0"),
        ("model.optimizer.weight_decay=null", "model.optimizer.weight_decay=null: expected a "
         "float >= 0"),
        ("data.val_fraction=abc", "data.val_fraction='abc': expected a float in [0, 1)"),
    ],
)  # fmt: skip
def test_bad_numeric_values_are_refused_before_work_starts(cub_root, make_cfg, override, message):
    """Wrong types ended as bare TypeErrors; max_epochs=0 ran "finished", -1 forever."""
    cfg = make_cfg([*tiny_overrides(cub_root), override])
    with pytest.raises(ConfigError) as err:
        train(cfg)
    assert str(err.value) == message
    record = json.loads((Path(cfg.paths.output_dir) / "metrics.json").read_text())
    assert record["status"] == "failed" and record["error"] == f"ConfigError: {message}"
    assert not (Path(cfg.paths.output_dir) / "checkpoints").exists()
    assert not (Path(cfg.paths.output_dir) / "run_config.json").exists()
    # The failed record is always readable, so a table counts it as failed.
    assert read_record_file(Path(cfg.paths.output_dir) / "metrics.json").status == "failed"


def test_optimizer_without_momentum_is_not_checked_for_it(make_cfg, tmp_path):
    from stnrepro.run.checks import check_numeric_keys

    cfg = make_cfg(["model.optimizer._target_=torch.optim.AdamW", "~model.optimizer.momentum"])
    check_numeric_keys(cfg)  # an absent key is fine; its value is not guessed


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without a GPU")
def test_gpu_trainer_on_a_cpu_machine_is_one_line(cub_root, make_cfg):
    cfg = make_cfg([*tiny_overrides(cub_root), "trainer=gpu"])
    with pytest.raises(ConfigError) as err:
        train(cfg)
    assert str(err.value) == (
        "trainer.accelerator=gpu: no GPU is available on this machine; use trainer=cpu"
    )


@pytest.mark.parametrize(
    ("override", "start"),
    [
        ("trainer.precision=abc", "trainer.precision='abc': Precision 'abc' is invalid."),
        ("+trainer.foo=1", "trainer.foo=1: Trainer.__init__() got an unexpected keyword "),
        ("trainer.devices=0", "trainer.devices=0: `Trainer(devices=0)` value is not a valid"),
    ],
)
def test_trainer_constructor_errors_name_the_key(cub_root, make_cfg, override, start):
    cfg = make_cfg([*tiny_overrides(cub_root), override])
    with pytest.raises(ConfigError) as err:
        train(cfg)
    assert str(err.value).startswith(start) and "\n" not in str(err.value)


def test_callback_constructor_errors_name_the_key(cub_root, make_cfg):
    cfg = make_cfg([*tiny_overrides(cub_root), "callbacks.lr_monitor.logging_interval=hour"])
    with pytest.raises(ConfigError, match=r"^callbacks\.lr_monitor\.logging_interval='hour': "):
        train(cfg)


@pytest.mark.parametrize(("flag", "which"), [(1, "test"), (0, "training")])
def test_split_without_test_or_training_images_is_refused_before_training(
    tmp_path, make_cfg, flag, which
):
    """No test images finished without test/acc; no training images: num_samples=0."""
    root = write_tiny_cub(tmp_path / "CUB_200_2011", train_per_class=4 * flag, size=(48, 40))
    cfg = make_cfg(tiny_overrides(root))
    with pytest.raises(DataError, match=rf"train_test_split\.txt: no {which} images"):
        train(cfg)
    assert not (Path(cfg.paths.output_dir) / "checkpoints").exists()


def test_missing_test_image_is_refused_before_training(tmp_path, make_cfg):
    root = write_tiny_cub(tmp_path / "CUB_200_2011", size=(48, 40))
    missing = sorted((root / "images").rglob("*.jpg"))[-1]  # a test image
    missing.unlink()
    cfg = make_cfg(tiny_overrides(root))
    with pytest.raises(DataError, match=r"1 of 12 listed image file\(s\) not found") as err:
        train(cfg)
    assert str(missing.relative_to(root / "images")) in str(err.value)
    assert not (Path(cfg.paths.output_dir) / "checkpoints").exists()
