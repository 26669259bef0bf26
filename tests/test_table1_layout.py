"""The digit table (Table 1): records in, error % by model and distortion out, bird table kept."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from test_table import make_record, runs, squeeze, write_record  # noqa: F401 (runs: fixture)

from stnrepro.cli import table as cli
from stnrepro.records.predictions import Predictions, write_predictions
from stnrepro.records.reader import load_records
from stnrepro.records.schema import model_label
from stnrepro.results.aggregate import aggregate
from stnrepro.results.digits import DigitTable, build_table, load_paper_digits
from stnrepro.results.model import TableError
from stnrepro.results.render import (
    render_claims_csv,
    render_csv,
    render_latex,
    render_markdown,
    render_terminal,
    write_table,
)

REPO = Path(__file__).resolve().parents[1]
N_IMAGES = 200
BACKBONES = {"FCN": "digit_fcn", "CNN": "digit_cnn"}
TRANSFORMS = {"Aff": "affine", "Proj": "projective", "TPS": "tps"}


def digit_record(
    model: str = "CNN",
    distortion: str = "R",
    seed: int = 0,
    acc: float | None = 0.99,
    *,
    dataset: str = "mnist",
    status: str = "finished",
    test_seed: int = 0,
) -> dict[str, Any]:
    """A Table 1 run's record, shaped like the writer's; ``model`` in the paper's spelling."""
    base, _, short = model.partition(" ")
    backbone = BACKBONES[base.removeprefix("ST-")]
    nt = 1 if short else 0
    transform = TRANSFORMS.get(short, "affine")
    size = 42 if distortion == "RTS" else 28
    record = make_record(size=size, nt=nt, seed=seed, acc=acc, status=status, dataset=dataset)
    record["run_name"] = f"{model.replace(' ', '-')}-{distortion}-s{seed}"
    record["cell"] = {
        "dataset": dataset, "distortion": distortion, "backbone": backbone, "pretrained": False,
        "image_size": size, "crop_size": None, "num_transformers": nt, "transform": transform,
        "seed": seed,
    }  # fmt: skip
    record["config"] = {
        "data.name": dataset, "data.distortion": distortion, "data.image_size": size,
        "data.test_seed": test_seed, "model.backbone": backbone, "model.num_transformers": nt,
        "model.transform": transform, "seed": seed, "data.seed": seed,
    }  # fmt: skip
    record["provenance"]["dataset"] = {"kind": "digits", "name": dataset, "index_sha256": "cd" * 32}
    return record


def write_digit_run(root: Path, model: str, distortion: str, seed: int, wrong: int, **kw) -> Path:
    """A finished run wrong on images 1..wrong of N_IMAGES, with its predictions.csv."""
    run = root / f"{model.replace(' ', '-')}-{distortion}-s{seed}-{kw.get('dataset', 'mnist')}"
    run.mkdir(parents=True)
    record = digit_record(model, distortion, seed, acc=1 - wrong / N_IMAGES, **kw)
    ids = np.arange(1, N_IMAGES + 1)
    label = ids % 10
    right = ids > wrong
    pred = np.where(right, label, (label + 1) % 10)
    record["predictions_sha256"] = write_predictions(
        run / "predictions.csv", Predictions(ids, label, pred, right, right)
    )
    record["predictions"] = "predictions.csv"
    record["test_images"] = N_IMAGES
    (run / "metrics.json").write_text(json.dumps(record))
    return run


@pytest.fixture
def mnist_runs(tmp_path: Path) -> Path:
    """CNN and ST-CNN Aff under R (two seeds each; the ST is wrong on a subset of the CNN's
    images: lower error), ST-CNN TPS under R worse than CNN (a superset), FCN and ST-FCN Aff
    under RTS wrong on the same images (one seed each), a failed CNN run."""
    root = tmp_path / "runs"
    for seed in (0, 1):
        write_digit_run(root, "CNN", "R", seed, 20 + 2 * seed)  # 10.0 and 11.0 % error
        write_digit_run(root, "ST-CNN Aff", "R", seed, 2 + 2 * seed)  # 1.0 and 2.0 %
    write_digit_run(root, "ST-CNN TPS", "R", 0, 30)  # 15.0 %
    write_digit_run(root, "FCN", "RTS", 0, 10)  # 5.0 %
    write_digit_run(root, "ST-FCN Aff", "RTS", 0, 10)  # 5.0 %
    write_digit_run(root, "CNN", "none", 0, 1)  # undistorted: a column of ours only
    write_record(root, "failed", digit_record("CNN", "R", 2, status="failed", acc=None))
    return root


def table_of(root: Path, **kw: Any) -> DigitTable:
    table = build_table(load_records(root), **kw)
    assert isinstance(table, DigitTable)
    return table


# --------------------------------------------------------------------------- labels


@pytest.mark.parametrize(
    ("args", "label"),
    [
        ((0, "inception_v3", "attention"), "CNN"),
        ((2, "small", "attention"), "2xST"),
        ((4, None, None), "4xST"),
        ((0, "digit_fcn", "affine"), "FCN"),
        ((0, "digit_cnn", "tps"), "CNN"),
        ((1, "digit_fcn", "affine"), "ST-FCN Aff"),
        ((1, "digit_cnn", "projective"), "ST-CNN Proj"),
        ((1, "digit_cnn", "tps"), "ST-CNN TPS"),
    ],
)
def test_one_label_function_names_bird_and_digit_models(args: tuple, label: str) -> None:
    assert model_label(*args) == label


def test_paper_labels_are_the_labels_of_our_runs() -> None:
    """Every model of the paper's Table 1 CSV is a name our runs can have."""
    ours = {
        model_label(nt, b, t)
        for nt in (0, 1)
        for b in BACKBONES.values()
        for t in TRANSFORMS.values()
    }
    paper = load_paper_digits()
    assert {m for m, _ in paper} <= ours
    assert paper[("ST-CNN Aff", "R")] == 0.7 and paper[("FCN", "RTS")] == 5.2
    shared = Path("/work/shared/paper/other_tables.csv")
    if shared.exists():  # the packaged copy must stay byte-identical to the source
        packaged = REPO / "src/stnrepro/results/paper_other_tables.csv"
        assert packaged.read_bytes() == shared.read_bytes()


# --------------------------------------------------------------------------- the table


def test_mnist_table_shows_error_beside_the_papers_number(mnist_runs: Path) -> None:
    table = table_of(mnist_runs)
    assert table.models == ("FCN", "CNN", "ST-FCN Aff", "ST-CNN Aff", "ST-CNN TPS")
    # The paper's columns in its order, then ours.
    assert table.distortions == ("R", "RTS", "P", "E", "none")
    cnn = table.cell("CNN", "R")
    assert cnn is not None and cnn.values == pytest.approx((10.0, 11.0)) and cnn.failed == 1
    assert cnn.paper_value == 1.2 and cnn.delta == pytest.approx(10.5 - 1.2)
    md = squeeze(render_markdown(table))
    assert md.startswith("# Comparison with Jaderberg et al. 2015 Table 1 (test error, lower")
    assert "- Test error in % = 100 - test/acc in %; error, lower is better;" in md
    assert "| Method | R ours error (%) | R paper (%) | RTS ours error (%) | RTS paper (%) |" in md
    assert "| CNN | 10.5 ± 0.7 (n=2) | 1.2 | — | 0.8 | — | 1.5 | — | 1.4 | 0.5 (n=1) |\n" in md
    assert "| ST-CNN Aff | 1.5 ± 0.7 (n=2) | 0.7 | — | 0.5 | — | 0.8 | — | 1.2 | — |\n" in md
    assert "| FCN | — | 2.1 | 5.0 (n=1) | 5.2 | — | 3.1 | — | 3.2 | — |\n" in md
    assert "| ST-FCN Aff | — | — | 5.0 (n=1) | — |" in md  # not in the paper's CSV
    assert "- Not in the paper's Table 1: models ST-FCN Aff; distortions none\n" in md
    assert "- Excluded runs by cell: CNN / R: 1 failed, 0 unfinished" in md
    rows = list(csv.DictReader(io.StringIO(render_csv(table))))
    assert len(rows) == len(table.models) * len(table.distortions)
    row = next(r for r in rows if (r["model"], r["distortion"]) == ("CNN", "R"))
    assert (row["paper"], row["ours_mean"], row["n"], row["failed"]) == (
        "1.2000",
        "10.5000",
        "2",
        "1",
    )
    assert row["quantity"] == "test error % (100 - test/acc %), lower is better"
    assert float(row["ci_lo"]) < 10.5 < float(row["ci_hi"])
    tex = squeeze(render_latex(table))
    assert r"Method & R ours (\%) & R paper (\%) & RTS ours (\%)" in tex
    assert "\n" + r"CNN & 10.5 $\pm$ 0.7 ($n$=2) & 1.2 & --- & 0.8 &" in tex
    assert "CNN" in render_terminal(table)


def test_claims_are_in_error_and_lower_error_is_confirmed(mnist_runs: Path) -> None:
    """An ST with LOWER error than its baseline is 'confirmed'; one with higher error is
    'contradicted'; the delta is error(ST) - error(baseline), negative when the ST wins."""
    table = table_of(mnist_runs)
    rows = list(csv.DictReader(io.StringIO(render_claims_csv(table))))
    claims = {r["comparison"]: r for r in rows}
    better = claims["ST-CNN Aff over CNN, R"]
    assert (better["model_a"], better["model_b"], better["distortion"]) == (
        "CNN",
        "ST-CNN Aff",
        "R",
    )
    assert float(better["delta"]) == pytest.approx(-9.0) and better["verdict"] == "confirmed"
    assert float(better["ci_lo"]) < float(better["ci_hi"]) < 0
    assert float(better["paper_delta"]) == pytest.approx(0.7 - 1.2)
    assert 0 < float(better["paper_resolution"]) < 1
    worse = claims["ST-CNN TPS over CNN, R"]
    assert (
        float(worse["delta"]) == pytest.approx(15.0 - 10.5) and worse["verdict"] == "contradicted"
    )
    same = claims["ST-FCN Aff over FCN, RTS"]
    assert float(same["delta"]) == 0 and same["verdict"] == "inconclusive"
    assert same["paper_delta"] == ""  # the paper's CSV has no ST-FCN Aff
    assert {r["convention"] for r in rows} == {
        "delta = error(model_b) - error(model_a) in pp; error, lower is better"
    }
    # Paper-only pairs (no runs of ours) keep the paper's difference and no verdict.
    paper_only = claims["ST-CNN TPS over CNN, P"]
    assert paper_only["delta"] == "" and float(paper_only["paper_delta"]) == pytest.approx(-0.7)
    md = squeeze(render_markdown(table))
    assert "error, lower is better: a negative Δ means X makes fewer errors" in md
    assert "- Verdict on 'X has the lower error': confirmed = the whole interval is below 0" in md
    assert "| ST-CNN Aff over CNN, R | -0.5 | 0.2 | -9.0 |" in md


def test_fashion_table_has_no_paper_column(tmp_path: Path) -> None:
    root = tmp_path / "runs"
    write_digit_run(root, "CNN", "R", 0, 20, dataset="fashion_mnist")
    write_digit_run(root, "ST-CNN Aff", "R", 0, 2, dataset="fashion_mnist")
    table = table_of(root)
    assert not table.compare_to_paper and table.distortions == ("R",)
    assert table.models == ("CNN", "ST-CNN Aff")  # no paper rows without runs
    md = squeeze(render_markdown(table))
    assert "# Distorted digits, fashion_mnist (no paper numbers)" in md
    assert (
        "- Note: the paper has no fashion_mnist numbers (its Table 1 is on mnist), so no paper "
        "column is shown and nothing is compared with it" in md
    )
    assert "paper" not in md.split("\n| Method")[1].split("\n")[0].lower()
    assert "| CNN | 10.0 (n=1) |" in md and "Paper Δ" not in md
    rows = list(csv.DictReader(io.StringIO(render_csv(table))))
    assert {r["paper"] for r in rows} == {""} and {r["delta"] for r in rows} == {""}
    (claim,) = csv.DictReader(io.StringIO(render_claims_csv(table)))
    assert claim["paper_delta"] == "" and claim["verdict"] == "confirmed"


def test_fashion_table_columns_are_in_the_papers_order(tmp_path: Path) -> None:
    root = tmp_path / "runs"
    for seed, distortion in enumerate(("E", "none", "RTS", "P", "R")):
        write_digit_run(root, "CNN", distortion, seed, 20, dataset="fashion_mnist")
    assert table_of(root).distortions == ("R", "RTS", "P", "E", "none")


def test_all_five_files_are_written(mnist_runs: Path, tmp_path: Path) -> None:
    paths = write_table(table_of(mnist_runs), tmp_path / "out", "mnist_table")
    assert sorted(p.name for p in paths) == [
        "mnist_table.csv", "mnist_table.md", "mnist_table.png", "mnist_table.tex",
        "mnist_table_claims.csv",
    ]  # fmt: skip
    assert (tmp_path / "out" / "mnist_table.png").read_bytes()[:4] == b"\x89PNG"


def test_cli_writes_the_digit_table(mnist_runs: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "out"
    assert cli.main(["--runs", str(mnist_runs), "--out", str(out)]) == 0
    assert (out / "mnist_table.md").read_text() == render_markdown(table_of(mnist_runs))
    assert "Jaderberg et al. 2015 Table 1" in capsys.readouterr().out


# --------------------------------------------------------------------------- refusals


def _refused(root: Path, tmp_path: Path, capsys, *args: str) -> str:
    out = tmp_path / "out"
    assert cli.main(["--runs", str(root), "--out", str(out), *args]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and not out.exists()
    return err


def test_bird_and_digit_runs_are_one_error_line(mnist_runs: Path, tmp_path: Path, capsys) -> None:
    write_record(mnist_runs, "bird", make_record())
    err = _refused(mnist_runs, tmp_path, capsys)
    assert "runs mix the bird experiment (Table 3: 1 run, backbone inception_v3: 1 run)" in err
    assert "pick one with --dataset NAME" in err
    assert (
        cli.main(["--runs", str(mnist_runs), "--out", str(tmp_path / "o"), "--dataset", "cub"]) == 0
    )


def test_two_digit_datasets_are_one_error_line(mnist_runs: Path, tmp_path: Path, capsys) -> None:
    write_digit_run(mnist_runs, "CNN", "R", 0, 3, dataset="fashion_mnist")
    err = _refused(mnist_runs, tmp_path, capsys)
    assert "digit runs mix dataset (fashion_mnist: 1 run, mnist: 9 runs)" in err
    assert (
        cli.main(["--runs", str(mnist_runs), "--out", str(tmp_path / "o"), "--dataset", "mnist"])
        == 0
    )


def test_pairs_tested_on_different_test_images_are_refused(
    mnist_runs: Path, tmp_path: Path, capsys
) -> None:
    write_digit_run(mnist_runs, "ST-CNN Proj", "R", 0, 3, test_seed=7)
    err = _refused(mnist_runs, tmp_path, capsys)
    assert "ST-CNN Proj over CNN, R: runs were tested on different distorted test sets" in err
    assert "data.test_seed 0, 7" in err


def test_attention_is_refused_for_digits(mnist_runs: Path, tmp_path: Path, capsys) -> None:
    err = _refused(mnist_runs, tmp_path, capsys, "--with-attention")
    assert "the digit table (Table 1) has no attention metrics" in err


# --------------------------------------------------------------------------- bird unchanged


def test_bird_records_still_make_the_bird_table(runs: Path) -> None:  # noqa: F811
    """Records without ``distortion`` (all written before it existed) are bird runs: the
    dispatcher gives exactly the table ``aggregate`` gives."""
    records = load_records(runs)
    assert all(r.cell.distortion is None and not r.cell.is_digit for r in records)
    assert render_markdown(build_table(records, dataset="cub")) == render_markdown(
        aggregate(records, dataset="cub")
    )


def test_the_bird_aggregation_refuses_digit_runs(mnist_runs: Path) -> None:
    """Called directly (not through ``build_table``), the bird table names a digit run
    instead of making a Table 3 of digit models."""
    with pytest.raises(TableError, match="a digit run \\(backbone digit_cnn, distortion R\\)"):
        aggregate(load_records(mnist_runs))


def test_another_metric_has_no_paper_column_and_no_claims(mnist_runs: Path) -> None:
    """The paper's numbers are top-1 test error: beside test/loss they would mean nothing."""
    table = table_of(mnist_runs, metric="test/loss")
    assert not table.compare_to_paper and not table.error and table.claims is None
    md = squeeze(render_markdown(table))
    assert "- Note: the paper reports top-1 test error only, so test/loss has no paper column" in md
    assert "| CNN | 0.500 ± 0.000 (n=2) |" in md and "paper (%)" not in md
    assert "Claims" not in md and "95% CI" not in md


def test_a_digit_run_without_a_distortion_is_one_error_line(
    mnist_runs: Path, tmp_path: Path, capsys
) -> None:
    record = digit_record("CNN", "R", 5)
    del record["cell"]["distortion"]  # a record written before the key, or a hand edit
    path = write_record(mnist_runs, "old", record)
    err = _refused(mnist_runs, tmp_path, capsys)
    assert f"{path}: a digit run without cell.distortion (1 run)" in err
