"""scripts/benchmark.py on CPU with --tiny: the script is correct (not fast) and its report
has every requested cell, the ratios and the environment header the GPU report needs."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def load_benchmark():
    spec = importlib.util.spec_from_file_location("benchmark", REPO / "scripts/benchmark.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while being defined
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def bench():
    return load_benchmark()


def test_tiny_run_reports_every_cell_with_ratios_and_environment(bench, tmp_path, capsys):
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
        "perf_counter",
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


def test_budget_skips_and_resume_completes_cells_from_one_run(bench, tmp_path):
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


def test_lever_parsing(bench):
    lever = bench.parse_lever("bench+bf16+cl+fused+roi_align+compile+b128+w8")
    assert (lever.bench, lever.precision, lever.channels_last, lever.fused) == (
        True, "bf16", True, True,
    )  # fmt: skip
    assert (lever.sampler, lever.compile, lever.batch_size, lever.workers) == (
        "roi_align", "trunks", 128, 8,
    )  # fmt: skip
    assert bench.parse_lever("cudagraphs").compile_mode == "reduce-overhead"
    assert bench.parse_lever("naive") == bench.Lever(name="naive")
    # A sampler makes no difference to the CNN: the benchmark reuses the measurement.
    assert bench.parse_lever("bf16+analytic").effective(0) == bench.parse_lever("bf16").effective(0)
    assert bench.parse_lever("bf16+analytic").effective(2) != bench.parse_lever("bf16").effective(2)
    with pytest.raises(ValueError, match="unknown token 'fp8'"):
        bench.parse_lever("bf16+fp8")
