"""stn-bench on CPU with --tiny: the benchmark is correct (not fast), its report has every
requested cell, the ratios and the environment header the GPU report needs, and every cell
is composed from the packaged training configs."""

from __future__ import annotations

import json
import re
from types import SimpleNamespace

import pytest

from stnrepro.bench import cells
from stnrepro.bench.cells import CELL_TITLES, CELLS, Lever, parse_lever
from stnrepro.cli.bench import TINY_BEST, main
from stnrepro.config import compose_config
from stnrepro.errors import ConfigError
from stnrepro.run.build import build

bench = SimpleNamespace(main=main, TINY_BEST=TINY_BEST, CELL_TITLES=CELL_TITLES, CELLS=CELLS)


@pytest.mark.slow
def test_tiny_run_reports_every_cell_with_ratios_and_environment(tmp_path, capsys):
    out = tmp_path / "b.md"
    levers = ["naive", "fused+roi_align", "analytic+compile"]
    argv = ["--tiny", "--device", "cpu", "--out", str(out), "--data-cache", str(tmp_path)]
    assert bench.main([*argv, "--levers", *levers]) == 0
    text = out.read_text()
    assert capsys.readouterr().out.rstrip().endswith(text.rstrip())  # the table is printed last
    # Environment header and method.
    for needle in (
        "## Environment",
        "Device:",
        "torch ",
        "CUDA",
        "cuDNN",
        "Batch size 4",
        "warm-up",
        "windows of",
        "torch.utils.benchmark",
        "ThroughputMonitor",
        "median",
        "naive = eager fp32",
    ):
        assert needle in text, needle
    # Every cell: model and e2e for naive and best, the DataLoader-only ceiling.
    best = bench.TINY_BEST
    for title in bench.CELL_TITLES.values():
        for mode, lever in (("model", "naive"), ("model", best), ("e2e", "naive"), ("e2e", best)):
            assert f"| {title} | {mode} | `{lever}` |" in text, (title, mode, lever)
        assert f"| {title} | data | DataLoader only |" in text
    assert "| 1.00x |" in text  # naive against itself
    assert "## Levers (model only)" in text and "`analytic+compile`" in text
    assert "## Crop samplers alone" in text and "| roi_align |" in text
    assert "Not evaluated: not a GPU run" in text
    # JSON: every measurement succeeded and has a positive rate.
    data = json.loads(out.with_suffix(".json").read_text())
    assert data["runs"][-1]["device"] == "cpu"
    rows = data["results"]
    assert {r["cell"] for r in rows} == set(bench.CELLS)
    failed = [(r["cell"], r["mode"], r["lever"], r["error"]) for r in rows if r["error"]]
    assert not failed
    assert all(r["img_s"] > 0 for r in rows)
    assert all(s["max_abs_diff"] < 1e-4 for s in data["samplers"])
    # Each row says how it was composed: the cell's experiment and the lever's overrides.
    row = next(r for r in rows if (r["cell"], r["mode"], r["lever"]) == ("4st448", "e2e", best))
    for override in ("experiment=cub_4st_448", "model.channels_last=true",
                     "trainer.precision=bf16-mixed", "model.sampler=analytic"):  # fmt: skip
        assert override in row["overrides"], override


@pytest.mark.slow
def test_budget_skips_and_resume_completes_cells_from_one_run(tmp_path):
    out = tmp_path / "b.md"
    argv = ["--tiny", "--device", "cpu", "--out", str(out), "--parts", "matrix"]
    argv += ["--modes", "model"]
    assert bench.main([*argv, "--cells", "cnn224"]) == 0
    # The budget is spent at once: 2st224 is skipped, the complete cnn224 is kept from run 0.
    assert bench.main([*argv, "--cells", "cnn224", "2st224", "--resume", "--budget-s", "0"]) == 0
    text = out.read_text()
    assert "skipped: time budget" in text and "| 2xST 224 | model | `naive` |" in text
    assert "Run 0:" in text and "Run 1 (this run):" in text
    # Resuming again re-measures the incomplete cell whole, in the new run.
    assert bench.main([*argv, "--cells", "cnn224", "2st224", "--resume"]) == 0
    data = json.loads(out.with_suffix(".json").read_text())
    assert len(data["runs"]) == 2
    runs = {(r["cell"], r["lever"]): r["run"] for r in data["results"]}
    assert runs[("cnn224", "naive")] == 0 and runs[("2st224", "naive")] == 1
    assert not any(r["error"] for r in data["results"])


def test_lever_parsing():
    lever = parse_lever("bench+bf16+cl+fused+roi_align+compile+b128+w8")
    assert lever.as_dict() == {
        "trainer.benchmark": "true", "trainer.precision": "bf16-mixed",
        "model.channels_last": "true", "model.compile": "default",
        "model.optimizer.fused": "true", "model.sampler": "roi_align",
        "data.batch_size": "128", "data.num_workers": "8",
    }  # fmt: skip
    assert parse_lever("cudagraphs").get("model.compile") == "reduce-overhead"
    assert parse_lever("naive") == Lever(name="naive")
    assert parse_lever("naive").as_dict() == cells.NAIVE_SETTINGS
    # A sampler makes no difference to the CNN: the benchmark reuses the measurement.
    assert parse_lever("bf16+analytic").effective(0) == parse_lever("bf16").effective(0)
    assert parse_lever("bf16+analytic").effective(2) != parse_lever("bf16").effective(2)
    with pytest.raises(ValueError, match="unknown token 'fp8'"):
        parse_lever("bf16+fp8")


@pytest.mark.parametrize("cell", list(CELLS))
def test_every_lever_composes_into_a_config_that_training_accepts(cell):
    """Each token is a real config key (Hydra refuses unknown keys), and the cell is the
    experiment's: the overrides change what the lever says and nothing else."""
    lever = parse_lever("bench+bf16+cl+fused+roi_align+autotune+b8+w1")
    overrides = cells.as_overrides({**cells.cell_overrides(cell, "resnet50", False),
                                    **lever.as_dict()})  # fmt: skip
    cfg = compose_config(overrides)
    n, size, crop = cells.cell_sizes(cell, tiny=False)
    assert (cfg.model.num_transformers, cfg.data.image_size, cfg.model.crop_size) == (n, size, crop)
    assert (cfg.model.backbone, cfg.model.pretrained) == ("resnet50", False)
    assert (cfg.trainer.benchmark, cfg.trainer.precision) == (True, "bf16-mixed")
    assert (cfg.model.channels_last, cfg.model.compile) == (True, "max-autotune-no-cudagraphs")
    assert (cfg.model.optimizer.fused, cfg.model.sampler) == (True, "roi_align")
    assert (cfg.data.batch_size, cfg.data.num_workers) == (8, 1)
    naive = compose_config(cells.as_overrides({**cells.cell_overrides(cell, "resnet50", False),
                                               **cells.NAIVE_SETTINGS}))  # fmt: skip
    # trainer=gpu of the experiments turns bf16 and autotuning on: naive turns them off.
    assert (naive.trainer.benchmark, naive.trainer.precision) == (False, "32-true")
    # The optimizer is the experiment's, not a copy: only fused differs.
    assert {**naive.model.optimizer, "fused": True} == dict(cfg.model.optimizer)


def test_a_bad_lever_value_is_refused_before_training_naming_the_key():
    cfg = compose_config(["model.compile=fastest"])
    with pytest.raises(ConfigError, match=re.escape("model.compile='fastest'")):
        build(cfg.model)  # what stn-train and stn-bench do first, before any data is read


@pytest.mark.slow
def test_table1_cpu_mode_measures_every_cell_against_the_tutorial_loop(digits_root, tmp_path):
    out = tmp_path / "cpu.md"
    argv = ["--table1", "--data-root", str(digits_root), "--out", str(out),
            "--batch-size", "8", "--warmup", "1", "--steps", "1", "--repeats", "2",
            "--levers", "fp32", "cl"]  # fmt: skip
    assert bench.main(argv) == 0
    text = out.read_text()
    assert "## Environment" in text and "tutorial's loop" in text
    for distortion in ("R", "RTS"):
        for model in ("CNN", "ST-CNN Aff", "ST-CNN TPS"):
            row = next(
                line for line in text.splitlines() if line.startswith(f"| {distortion} | {model} |")
            )
            assert "failed" not in row and row.count("x |") == 2, row
    assert "| `cl` |" in text and "Reached here: ST-CNN Aff on RTS e2e / naive = " in text
    rows = json.loads(out.with_suffix(".json").read_text())["rows"]
    assert len(rows) == 6 * 3 + 2
    assert all(r["error"] is None and r["img_s"] > 0 and len(r["windows"]) == 2 for r in rows)
    # The recipe is the experiment's, on the real data files: 1-channel 42 px RTS batches.
    assert {r["mode"] for r in rows} == {"naive", "model", "e2e", "lever"}


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--device", "cuda"], "--table1 measures the CPU"),
        (["--levers", "fp32", "turbo"], "unknown token 'turbo'"),
    ],
)
def test_table1_mode_refuses_bad_options_in_one_line(extra, message, capsys):
    assert bench.main(["--table1", *extra]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and message in err, err
