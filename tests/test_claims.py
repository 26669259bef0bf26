"""Intervals and claims from per-image predictions: known answers on constructed runs."""

from __future__ import annotations

import csv
import hashlib
import io
import json
from pathlib import Path

import numpy as np
import pytest
from test_table import make_record
from wandb_records import read_records

from stnrepro.cli import table as cli
from stnrepro.records.predictions import Predictions, write_predictions
from stnrepro.records.reader import load_records
from stnrepro.results.aggregate import aggregate
from stnrepro.results.render import (
    render_claims_csv,
    render_csv,
    render_latex,
    render_markdown,
    render_terminal,
    write_table,
)

N_IMAGES = 400


def write_run(
    root: Path, size: int, nt: int, seed: int, n_correct: int, predictions: bool = True
) -> Path:
    """A finished run right on images 1..n_correct of N_IMAGES (its record says the same)."""
    run = root / f"{nt}st-{size}-s{seed}"
    run.mkdir(parents=True)
    record = make_record(size=size, nt=nt, seed=seed, acc=n_correct / N_IMAGES)
    ids = np.arange(1, N_IMAGES + 1)
    label = ids % 7
    pred = np.where(ids <= n_correct, label, (label + 1) % 7)
    if predictions:
        record["predictions_sha256"] = write_predictions(
            run / "predictions.csv",
            Predictions(ids, label, pred, ids <= n_correct, ids <= n_correct),
        )
        record["predictions"] = "predictions.csv"
        record["test_images"] = N_IMAGES
    (run / "metrics.json").write_text(json.dumps(record))
    return run


@pytest.fixture
def claim_runs(tmp_path: Path) -> Path:
    """2xST 224 right on a superset of CNN 224's images (confirmed), 2xST 448 on the same
    as 2xST 224 (inconclusive), 4xST 448 on a subset of both (contradicted); CNN 448 has
    no predictions.csv (named as missing)."""
    root = tmp_path / "runs"
    for seed in (0, 1):
        write_run(root, 224, 0, seed, 200)
        write_run(root, 224, 2, seed, 240)
    write_run(root, 448, 2, 0, 240)
    write_run(root, 448, 4, 0, 180)
    write_run(root, 448, 0, 0, 220, predictions=False)
    return root


def claims_of(root: Path) -> dict[str, list[str]]:
    rows = list(csv.reader(io.StringIO(render_claims_csv(aggregate(load_records(root))))))
    return {row[0]: row[1:] for row in rows}


def test_claims_have_known_verdicts(claim_runs: Path) -> None:
    claims = claims_of(claim_runs)
    assert claims["comparison"] == [
        "model_a", "model_b", "paper_delta", "paper_resolution", "delta", "ci_lo", "ci_hi",
        "verdict", "resolution", "missing_predictions",
    ]  # fmt: skip
    expected = {  # comparison: (paper delta, ours delta, verdict)
        "2xST 224 over CNN 224": ("0.8000", "10.0000", "confirmed"),
        "2xST 448 over 2xST 224": ("0.8000", "0.0000", "inconclusive"),
        "4xST 448 over 2xST 448": ("0.2000", "-15.0000", "contradicted"),
        "4xST 448 over CNN 224": ("1.8000", "-5.0000", "contradicted"),
        "CNN 448 over CNN 224": ("", "5.0000", ""),
    }
    assert list(claims)[1:] == list(expected)
    for name, (paper, ours, verdict) in expected.items():
        row = claims[name]
        assert (row[2], row[4], row[7]) == (paper, ours, verdict), name
    # Identical predictions: a zero-width interval at 0, nothing resolvable beyond it.
    assert claims["2xST 448 over 2xST 224"][5:9] == ["0.0000", "0.0000", "inconclusive", "0.0000"]
    lo, hi = float(claims["2xST 224 over CNN 224"][5]), float(claims["2xST 224 over CNN 224"][6])
    assert 0 < lo < 10 < hi
    # The paper's single runs resolve about ±0.9 pp on 5,794 images: +0.2 is below that.
    assert 0.9 < float(claims["4xST 448 over 2xST 448"][3]) < 1.0
    assert claims["CNN 448 over CNN 224"][9] == "CNN-448-s0"


def test_run_without_predictions_is_named_and_still_counted(claim_runs: Path) -> None:
    table = aggregate(load_records(claim_runs))
    md = render_markdown(table)
    assert (
        "- No predictions.csv its record can vouch for (none, or a record without its sha256), "
        "so in mean ± std but not in the 95% CI or the claims: CNN-448-s0" in md
    )
    assert "- Left out of the paired statistics (no predictions.csv): CNN-448-s0" in md
    row = next(r for r in table.rows if r.image_size == 448 and r.num_transformers == 0)
    assert row.stats is not None and row.stats.n == 1 and row.stats.interval is None
    assert "| CNN 448px " in md and "55.0" in md


def test_interval_columns_in_every_format(claim_runs: Path) -> None:
    table = aggregate(load_records(claim_runs))
    rows = list(csv.DictReader(io.StringIO(render_csv(table))))
    cnn = next(r for r in rows if r["row"] == "CNN 224px")
    assert float(cnn["ci_lo"]) < float(cnn["ours_mean"]) == 50.0 < float(cnn["ci_hi"])
    assert next(r for r in rows if r["row"] == "CNN 448px")["ci_lo"] == ""
    lo, hi = float(cnn["ci_lo"]), float(cnn["ci_hi"])
    ci = f"[{lo:.1f}, {hi:.1f}]"
    md, tex, term = render_markdown(table), render_latex(table), render_terminal(table)
    assert "95% CI (%)" in md and r"95\% CI (\%)" in tex and "95% CI" in term
    for text in (md, tex, term):
        assert ci in text
    assert "# Claims: differences between cells" in md and "% Claims:" in tex
    assert r"$[+0.0, +0.0]$ & inconclusive" in tex
    assert "Paper top-1: one run each on 5,794 test images, which resolves about ±0.9–1.0 pp" in md
    main_table = term.split("\n\n")[1]  # title + notes, table, title + notes, claims
    assert all(len(line) <= 80 for line in main_table.splitlines())


def test_non_test_metric_has_no_intervals_or_claims(claim_runs: Path) -> None:
    table = aggregate(load_records(claim_runs), metric="val/acc")
    assert table.claims is None and not table.intervals
    assert "95% CI" not in render_markdown(table) and "Claims" not in render_markdown(table)
    assert render_claims_csv(table).splitlines()[1:] == []


def test_write_table_writes_claims_and_a_two_panel_plot(claim_runs: Path, tmp_path: Path) -> None:
    paths = write_table(aggregate(load_records(claim_runs)), tmp_path / "out", "cub_table")
    assert [p.name for p in paths] == [
        "cub_table.md", "cub_table.csv", "cub_table.tex", "cub_table_claims.csv", "cub_table.png",
    ]  # fmt: skip
    assert "confirmed" in (tmp_path / "out" / "cub_table_claims.csv").read_text()


def test_plot_is_two_panels_with_every_label_visible(claim_runs: Path, tmp_path: Path) -> None:
    """Every text (the paper's 82.3 included) lies inside the figure and under no legend."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    from stnrepro.results import render

    figures: list[Figure] = []
    real_savefig = Figure.savefig

    def keep(self: Figure, *args: object, **kwargs: object) -> None:
        figures.append(self)
        real_savefig(self, *args, **kwargs)

    Figure.savefig = keep  # type: ignore[method-assign]
    try:
        render.render_plot(aggregate(load_records(claim_runs)), tmp_path / "p.png")
    finally:
        Figure.savefig = real_savefig  # type: ignore[method-assign]
    fig = figures[0]
    renderer = (
        FigureCanvasAgg(fig).get_renderer() if fig.canvas is None else fig.canvas.get_renderer()
    )
    axes = fig.get_axes()
    assert len(axes) == 2
    box = fig.bbox
    legends = [ax.get_legend().get_window_extent(renderer) for ax in axes if ax.get_legend()]
    texts = [t for ax in axes for t in ax.texts]
    assert "82.3" in [t.get_text() for t in texts]
    for t in texts:
        extent = t.get_window_extent(renderer)
        assert box.x0 <= extent.x0 and extent.x1 <= box.x1, t.get_text()
        assert box.y0 <= extent.y0 and extent.y1 <= box.y1, t.get_text()
        assert not any(extent.overlaps(leg) for leg in legends), t.get_text()
    assert any(line.get_xdata()[0] == 0 for line in axes[1].get_lines()), "zero line"


def test_cli_wandb_log_writes_an_offline_table_run(
    claim_runs: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "results"
    assert cli.main(["--runs", str(claim_runs), "--out", str(out), "--wandb-log",
                     "--group", "sweep-x"]) == 0  # fmt: skip
    (run_dir,) = (out / "wandb").glob("offline-run-*")
    records = read_records(next(run_dir.glob("run-*.wandb")), wait_s=10)
    (run,) = [r.run for r in records if r.WhichOneof("record_type") == "run"]
    assert (run.job_type, run.run_group, run.project) == ("table", "sweep-x", "stnrepro")
    logged: dict[str, dict[str, object]] = {}  # a logged media object: one item per field
    for r in records:
        if r.WhichOneof("record_type") == "history":
            for item in r.history.item:
                if len(item.nested_key) == 2:
                    key, field = item.nested_key
                    logged.setdefault(key, {})[field] = json.loads(item.value_json)
    assert logged["table"]["_type"] == logged["claims"]["_type"] == "table-file"
    assert logged["plot"]["_type"] == "image-file"
    files = run_dir / "files"
    claims = json.loads((files / logged["claims"]["path"]).read_text())
    assert claims["data"][0][0] == "2xST 224 over CNN 224" and claims["data"][0][8] == "confirmed"
    table = json.loads((files / logged["table"]["path"]).read_text())
    assert {"ci_lo", "ci_hi"} <= set(table["columns"])
    assert (files / logged["plot"]["path"]).read_bytes()[:4] == b"\x89PNG"
    (artifact,) = [
        r.artifact for r in records
        if r.WhichOneof("record_type") == "artifact" and r.artifact.type == "table"
    ]  # fmt: skip
    assert sorted(m.path for m in artifact.manifest.contents) == [
        "cub_table.csv", "cub_table.md", "cub_table.png", "cub_table.tex", "cub_table_claims.csv",
    ]  # fmt: skip


def test_a_claim_whose_cell_has_no_runs_is_named_by_the_papers_size(tmp_path: Path) -> None:
    """The paper's claims are always listed; a side without runs used to read 'None'."""
    write_run(tmp_path, 224, 0, 0, 200)
    write_run(tmp_path, 224, 2, 0, 240)
    claims = claims_of(tmp_path)
    assert "2xST 448 over 2xST 224" in claims and "4xST 448 over CNN 224" in claims
    assert not any("None" in label for label in claims)
    assert claims["2xST 448 over 2xST 224"][4] == ""  # no difference of ours to show


def _table_error(root: Path, capsys) -> str:
    """stn-table on ``root``: exit 2, one ``error:`` line (returned), nothing written."""
    out = root.parent / "out"
    assert cli.main(["--runs", str(root), "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("error: "), err
    assert not out.exists()
    return err


def _rewrite(run: Path, rows: list[str], **record_changes: object) -> None:
    """Replace a run's predictions.csv by ``rows`` (header first), updating what the record
    says of the file (its sha256 and image count) unless ``record_changes`` says otherwise."""
    data = ("\n".join(rows) + "\n").encode()
    (run / "predictions.csv").write_bytes(data)
    record = json.loads((run / "metrics.json").read_text())
    record.update(predictions_sha256=hashlib.sha256(data).hexdigest(), test_images=len(rows) - 1)
    record.update(record_changes)
    (run / "metrics.json").write_text(json.dumps(record))


def test_a_predictions_file_replaced_after_the_run_is_refused(claim_runs, capsys):
    run = claim_runs / "0st-224-s0"
    lines = (run / "predictions.csv").read_text().splitlines()
    all_right = [lines[0]] + [f"{i},1,1,1,1" for i in range(1, N_IMAGES + 1)]
    (run / "predictions.csv").write_text("\n".join(all_right) + "\n")
    err = _table_error(claim_runs, capsys)
    assert f"{run / 'predictions.csv'}: sha256" in err and "changed or replaced" in err


def test_predictions_with_fewer_rows_than_the_record_scored_are_refused(claim_runs, capsys):
    run = claim_runs / "0st-224-s0"
    lines = (run / "predictions.csv").read_text().splitlines()
    _rewrite(run, lines[:181], test_images=N_IMAGES)  # the hash fits, the count does not
    err = _table_error(claim_runs, capsys)
    assert f"{run / 'predictions.csv'}: 180 rows" in err and f"scored {N_IMAGES}" in err


def test_predictions_that_disagree_with_the_records_accuracy_are_refused(claim_runs, capsys):
    run = claim_runs / "0st-224-s0"
    header = (run / "predictions.csv").read_text().splitlines()[0]
    _rewrite(run, [header] + [f"{i},1,1,1,1" for i in range(1, N_IMAGES + 1)])
    err = _table_error(claim_runs, capsys)
    assert f"{N_IMAGES} of {N_IMAGES} correct" in err and "test/acc 50.00%" in err


@pytest.mark.parametrize("where", ["../0st-224-s1/predictions.csv", "/etc/passwd", "p.csv"])
def test_a_record_cannot_point_at_another_predictions_file(claim_runs, capsys, where):
    path = claim_runs / "0st-224-s0" / "metrics.json"
    record = json.loads(path.read_text())
    record["predictions"] = where
    path.write_text(json.dumps(record))
    err = _table_error(claim_runs, capsys)
    assert f"{path}: key 'predictions' must be 'predictions.csv'" in err and repr(where) in err


def test_a_linked_predictions_file_is_not_followed(claim_runs, capsys):
    run = claim_runs / "0st-224-s0"
    (run / "predictions.csv").unlink()
    (run / "predictions.csv").symlink_to(claim_runs / "0st-224-s1" / "predictions.csv")
    assert "a link; expected the run's own file" in _table_error(claim_runs, capsys)


def test_predictions_that_are_not_utf8_are_one_line(claim_runs, capsys):
    run = claim_runs / "0st-224-s0"
    data = (run / "predictions.csv").read_bytes() + b"\xff\xfe\n"
    (run / "predictions.csv").write_bytes(data)
    record = json.loads((run / "metrics.json").read_text())
    record["predictions_sha256"] = hashlib.sha256(data).hexdigest()
    (run / "metrics.json").write_text(json.dumps(record))
    assert "not UTF-8 text" in _table_error(claim_runs, capsys)


def test_a_record_without_the_files_sha256_is_counted_but_not_trusted(claim_runs):
    """Records written before the sha256 was kept: in mean ± std, not in the intervals."""
    path = claim_runs / "0st-224-s0" / "metrics.json"
    record = json.loads(path.read_text())
    del record["predictions_sha256"]
    path.write_text(json.dumps(record))
    table = aggregate(load_records(claim_runs))
    cnn = next(r for r in table.rows if r.num_transformers == 0 and r.image_size == 224)
    assert cnn.stats.n == 2 and cnn.stats.missing == ("CNN-224-s0",)


def test_a_metric_too_large_for_a_float_is_one_line(claim_runs, capsys):
    path = claim_runs / "0st-224-s0" / "metrics.json"
    text = path.read_text().replace('"test/acc": 0.5', '"test/acc": 1' + "0" * 400)
    assert text != path.read_text()
    path.write_text(text)
    err = _table_error(claim_runs, capsys)
    assert "key 'metrics.test/acc' is an integer of 401 digits" in err
