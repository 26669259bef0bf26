"""The comparison table: records in, exact Markdown/CSV/LaTeX/PNG out, bad input refused."""

from __future__ import annotations

import copy
import csv
import io
import json
import re
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from stnrepro.cli import table as cli
from stnrepro.errors import StnreproError
from stnrepro.records.definition import ADDED_KEYS, current_names
from stnrepro.records.reader import load_records, record_from_wandb_run
from stnrepro.records.schema import RecordError, RunRecord
from stnrepro.results import render as render_mod
from stnrepro.results.aggregate import aggregate, load_paper_table
from stnrepro.results.csv_rows import CSV_COLUMNS
from stnrepro.results.model import TableError
from stnrepro.results.render import (
    render_csv,
    render_latex,
    render_markdown,
    render_terminal,
    write_table,
)

REPO = Path(__file__).resolve().parents[1]
OUTPUTS = (
    "cub_table.md", "cub_table.csv", "cub_table.tex", "cub_table_claims.csv", "cub_table.png",
)  # fmt: skip


def make_record(
    *,
    size: int = 224,
    nt: int = 0,
    seed: int = 0,
    acc: float | None = 0.8,
    status: str = "finished",
    finished_at: str | None = "2026-11-22T10:30:00+00:00",
    dataset: str = "cub",
    backbone: str = "inception_v3",
    crop_size: int = 224,
    extra_metrics: dict[str, float | None] | None = None,
    config: dict[str, Any] | bool | None = True,
    provenance: dict[str, Any] | bool | None = True,
) -> dict[str, Any]:
    """A record shaped like the ones ``stnrepro.records.writer`` writes.

    ``config``/``provenance``: True gives the usual ones (``config`` from the cell, one fixed
    environment), None leaves the key out (a record from before it existed), a dict
    updates the usual one.
    """
    model = "CNN" if nt == 0 else f"{nt}xST"
    metrics: dict[str, float | None] = (
        {} if acc is None else {"val/acc": acc, "test/acc": acc, "test/loss": 0.5}
    )
    metrics.update(extra_metrics or {})
    record = {
        "schema_version": 1,
        "status": status,
        "error": "RuntimeError: boom" if status == "failed" else None,
        "run_name": f"{model}-{size}-s{seed}",
        "started_at": "2026-11-22T10:00:00+00:00",
        "finished_at": None if status == "running" else finished_at,
        "cell": {
            "dataset": dataset,
            "backbone": backbone,
            "pretrained": True,
            "image_size": size,
            "crop_size": crop_size,
            "num_transformers": nt,
            "transform": "attention",
            "seed": seed,
        },
        "metrics": metrics,
        "logger": {"name": "none", "run_id": None, "project": None, "group": None, "dir": None},
        "epochs": 30,
        "wall_time_s": 12.5,
        "output_dir": "/somewhere/else",
    }
    if config is not None:
        record["config"] = {
            "data.name": dataset, "data.image_size": size, "model.backbone": backbone,
            "model.num_transformers": nt, "model.crop_size": crop_size, "seed": seed,
            "data.seed": seed,  # follows seed, as in the data configs (${seed})
            "trainer.max_epochs": 30, **(config if isinstance(config, dict) else {}),
        }  # fmt: skip
    if provenance is not None:
        record["provenance"] = copy.deepcopy(PROVENANCE)
        record["provenance"].update(provenance if isinstance(provenance, dict) else {})
    return record


PROVENANCE: dict[str, Any] = {
    "git": {"commit": "0" * 40, "dirty": False},
    "versions": {
        "python": "3.11.9", "torch": "2.14.1", "torchvision": "0.29.1",
        "pytorch-lightning": "2.6.6", "torchmetrics": "1.8.0", "hydra-core": "1.3.2",
        "wandb": "0.21.0", "numpy": "2.3.1", "pillow": "11.3.0",
    },
    "os": "Linux-6.8.0-x86_64-with-glibc2.39",
    "cpu": "Intel(R) Xeon(R) Platinum 8480+",
    "cpu_capability": "AVX512",
    "threads": 2,
    "gpu": None,
    "precision": "32-true",
    "dataset": {
        "kind": "cub", "name": "cub", "index_sha256": "ab12cd34" + "0" * 56,
        "index_files": ["images.txt"],
    },
}  # fmt: skip


def squeeze(text: str) -> str:
    """Rendered tables with tabulate's column padding collapsed to one space, for ``in`` checks."""
    return re.sub(r" {2,}", " ", text).replace("\n ", "\n")


def write_record(root: Path, rel: str, record: Any) -> Path:
    path = root / rel / "metrics.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(record if isinstance(record, str) else json.dumps(record), encoding="utf-8")
    return path


@pytest.fixture
def runs(tmp_path: Path) -> Path:
    """A logs root with every case the table must handle (see EXPECTED_MD)."""
    root = tmp_path / "runs"
    # CNN 224: two seeds plus a failed one.
    write_record(root, "sweep/0", make_record(seed=0, acc=0.810))
    write_record(root, "sweep/1", make_record(seed=1, acc=0.822))
    write_record(root, "sweep/2", make_record(seed=2, status="failed", acc=None))
    # 2xST 224: seed 0 rerun; the newer finished one sorts first by path, so the pick
    # must come from finished_at, not from file order.
    write_record(
        root,
        "st2-224-s0",
        make_record(nt=2, seed=0, acc=0.830, finished_at="2026-11-22T11:00:00Z"),
    )
    write_record(
        root,
        "st2-224-s0-b",
        make_record(nt=2, seed=0, acc=0.800, finished_at="2026-11-22T09:00:00Z"),
    )
    write_record(root, "st2-224-s1", make_record(nt=2, seed=1, acc=0.836))
    # 2xST 448: only an unfinished run; 4xST 448: no runs at all (missing cell).
    write_record(root, "st2-448-s0", make_record(size=448, nt=2, status="running", acc=None))
    # Extra cells, not in the paper.
    write_record(root, "cnn448-s0", make_record(size=448, acc=0.815))
    write_record(root, "st4-224-s0", make_record(nt=4, acc=0.840))
    # Another dataset in the same root: must never be merged.
    write_record(root, "synth/0", make_record(size=64, dataset="synth_birds", acc=0.5))
    return root


EXPECTED_MD = """\
# Comparison with Jaderberg et al. 2015 Table 3

- Dataset: cub; backbone: inception_v3; pretrained: yes
- ST runs: crop 224 px, transform attention
- Input sizes: as in the paper
- Metric: test/acc in %, mean ± sample std (n-1) over seeds, std omitted when n = 1; Δ = ours \
- paper, in percentage points
- Runs: 6 used; excluded: 1 failed, 1 unfinished; 1 duplicate dropped (older finished reruns \
of a seed)
- Column 'failed' counts a row's failed and unfinished runs (excluded)
- Environment: torch 2.14.1, torchvision 0.29.1, lightning 2.6.6, \
CPU Intel(R) Xeon(R) Platinum 8480+ (AVX512), 2 threads, fp32; data cub index ab12cd34
- 95% CI: percentile bootstrap over seeds and test images together, from each run's per-image \
predictions (predictions.csv); — where no run of the row has them
- No predictions.csv its record can vouch for (none, or a record without its sha256), so in \
mean ± std but not in the 95% CI or the claims: CNN-224-s0, \
CNN-224-s1, 2xST-224-s0, 2xST-224-s1, CNN-448-s0, 4xST-224-s0
- Paper top-1: one run each on 5,794 test images, which resolves about ±0.9–1.0 pp at 95% \
(binomial), before any seed-to-seed spread

| Method                               |   Paper top-1 (%) |   Ours test/acc (%) |   95% CI (%) |   Δ (pp) |   n |   failed |
|:-------------------------------------|------------------:|--------------------:|-------------:|---------:|----:|---------:|
| Cimpoi '15                           |              66.7 |                   — |            — |        — |   — |        — |
| Zhang '14                            |              74.9 |                   — |            — |        — |   — |        — |
| Branson '14                          |              75.7 |                   — |            — |        — |   — |        — |
| Lin '15                              |              80.9 |                   — |            — |        — |   — |        — |
| Simon '15                            |              81.0 |                   — |            — |        — |   — |        — |
| CNN 224px                            |              82.3 |          81.6 ± 0.8 |            — |     -0.7 |   2 |        1 |
| 2xST-CNN 224px                       |              83.1 |          83.3 ± 0.4 |            — |     +0.2 |   2 |        0 |
| 2xST-CNN 448px                       |              83.9 |                   — |            — |        — |   0 |        1 |
| 4xST-CNN 448px                       |              84.1 |                   — |            — |        — |   0 |        0 |
| ***Extra cells (not in the paper)*** |                   |                     |              |          |     |          |
| CNN 448px                            |                 — |                81.5 |            — |        — |   1 |        0 |
| 4xST-CNN 224px                       |                 — |                84.0 |            — |        — |   1 |        0 |

## Claims: differences between cells, paired on the same test images

- X over Y: X - Y in percentage points; ours from the runs' per-image predictions, paired on \
the same test images (bootstrap over images and seeds, 95%)
- Verdict on 'X beats Y': confirmed = the whole interval is above 0, contradicted = below 0, \
inconclusive = it contains 0
- Resolvable: half the interval's width, the smallest difference these runs can tell from 0; \
with no predictions on a side there is only the difference of the means
- Paper ±: what one run on the paper's test set resolves at 95% (binomial, the larger of the \
two numbers'); a paper Δ smaller than it is within test-set noise
- Left out of the paired statistics (no predictions.csv): CNN-224-s0, CNN-224-s1, 2xST-224-s0, \
2xST-224-s1, CNN-448-s0, 4xST-224-s0

| Comparison             |   Paper Δ (pp) |   Paper ± (pp) |   Ours Δ (pp) |   95% CI (pp) |   Verdict |   Resolvable (pp) |
|:-----------------------|---------------:|---------------:|--------------:|--------------:|----------:|------------------:|
| 2xST 224 over CNN 224  |           +0.8 |            1.0 |          +1.7 |             — |         — |                 — |
| 2xST 448 over 2xST 224 |           +0.8 |            1.0 |             — |             — |         — |                 — |
| 4xST 448 over 2xST 448 |           +0.2 |            0.9 |             — |             — |         — |                 — |
| 4xST 448 over CNN 224  |           +1.8 |            1.0 |             — |             — |         — |                 — |
| ***With extra cells*** |                |                |               |               |           |                   |
| CNN 448 over CNN 224   |              — |              — |          -0.1 |             — |         — |                 — |
| 4xST 224 over CNN 224  |              — |              — |          +2.4 |             — |         — |                 — |
| 4xST 224 over 2xST 224 |              — |              — |          +0.7 |             — |         — |                 — |
"""  # noqa: E501 (tabulate pads the columns)

MIXED_MESSAGE = (
    "runs mix dataset (cub: 9 runs, synth_birds: 1 run); one table never merges them: "
    "pick one with --dataset NAME"
)


# --------------------------------------------------------------------------- aggregation


def test_markdown_matches_the_documented_table(runs: Path) -> None:
    table = aggregate(load_records(runs), dataset="cub")
    assert render_markdown(table) == EXPECTED_MD
    assert (table.n_used, table.n_failed, table.n_unfinished, table.n_duplicates) == (6, 1, 1, 1)


def test_latest_finished_rerun_is_used(runs: Path) -> None:
    table = aggregate(load_records(runs), dataset="cub")
    row = next(r for r in table.rows if r.label == "2xST-CNN 224px")
    assert row.stats is not None
    assert [r.source.endswith("st2-224-s0/metrics.json") for r in row.stats.runs] == [True, False]
    assert row.stats.values == pytest.approx((83.0, 83.6))
    assert row.stats.duplicates == 1


def test_mixed_datasets_are_refused(runs: Path) -> None:
    with pytest.raises(TableError) as err:
        aggregate(load_records(runs))
    assert str(err.value) == MIXED_MESSAGE


def test_dataset_filter_that_matches_nothing_names_what_exists(runs: Path) -> None:
    with pytest.raises(TableError, match=r"no runs with dataset=imagenet \(found cub: 9 runs"):
        aggregate(load_records(runs), dataset="imagenet")


def test_mixed_backbones_are_refused(tmp_path: Path) -> None:
    write_record(tmp_path, "a", make_record())
    write_record(tmp_path, "b", make_record(backbone="resnet50"))
    with pytest.raises(TableError, match=r"mix backbone .* pick one with --backbone NAME"):
        aggregate(load_records(tmp_path))
    assert aggregate(load_records(tmp_path), backbone="resnet50").backbone == "resnet50"


def test_st_runs_with_different_crop_sizes_are_refused(tmp_path: Path) -> None:
    write_record(tmp_path, "a", make_record(nt=2, crop_size=224))
    write_record(tmp_path, "b", make_record(nt=2, seed=1, crop_size=112))
    with pytest.raises(TableError, match=r"ST runs mix crop_size \(112: 1 run, 224: 1 run\)"):
        aggregate(load_records(tmp_path))


def test_cnn_crop_size_does_not_count_as_mixing(tmp_path: Path) -> None:
    write_record(tmp_path, "a", make_record(nt=0, crop_size=999))
    write_record(tmp_path, "b", make_record(nt=2, crop_size=224))
    assert aggregate(load_records(tmp_path)).crop_size == 224


def test_all_failed_is_refused(tmp_path: Path) -> None:
    write_record(tmp_path, "a", make_record(status="failed", acc=None))
    write_record(tmp_path, "b", make_record(status="running", acc=None))
    with pytest.raises(TableError, match=r"all 2 runs failed or are unfinished \(1 failed, 1 unf"):
        aggregate(load_records(tmp_path))


def test_an_interrupted_run_counts_as_unfinished_never_as_a_result(tmp_path: Path) -> None:
    write_record(tmp_path, "a", make_record(seed=0, acc=0.5))
    write_record(tmp_path, "b", make_record(seed=1, status="interrupted", acc=None))
    table = aggregate(load_records(tmp_path))
    assert (table.n_used, table.n_failed, table.n_unfinished) == (1, 0, 1)


def test_small_demo_sizes_map_onto_the_paper_sizes(tmp_path: Path) -> None:
    write_record(tmp_path, "a", make_record(size=64, acc=0.5))
    write_record(tmp_path, "b", make_record(size=128, nt=2, acc=0.6))
    write_record(tmp_path, "c", make_record(size=64, nt=4, acc=0.55))
    md = squeeze(render_markdown(aggregate(load_records(tmp_path))))
    assert "- Input sizes: input 64/128 px stand in for the paper's 224/448 px\n" in md
    assert "| CNN 64px (paper: 224px) | 82.3 | 50.0 | — | -32.3 | 1 | 0 |\n" in md
    assert "| 2xST-CNN 128px (paper: 448px) | 83.9 | 60.0 | — | -23.9 | 1 | 0 |\n" in md
    assert "| 4xST-CNN 128px (paper: 448px) | 84.1 | — | — | — | 0 | 0 |\n" in md
    assert "| 4xST-CNN 64px (paper: 224px) | — | 55.0 | — | — | 1 | 0 |\n" in md
    # The claims use our sizes; the paper's 2xST 224 has no stand-in runs here.
    assert "| 2xST 128 over 2xST 64 | +0.8 | 1.0 | — | — | — | — |\n" in md
    assert md.endswith("| 4xST 64 over CNN 64 | — | — | +5.0 | — | — | — |\n")


def test_more_than_two_stand_in_sizes_are_refused(tmp_path: Path) -> None:
    for size in (64, 96, 128):
        write_record(tmp_path, str(size), make_record(size=size))
    with pytest.raises(TableError, match=r"3 input sizes \(64, 96, 128 px\)"):
        aggregate(load_records(tmp_path))


def test_non_accuracy_metric_has_no_delta(runs: Path) -> None:
    table = aggregate(load_records(runs), dataset="cub", metric="test/loss")
    md = squeeze(render_markdown(table))
    assert "the paper reports top-1 accuracy only, so there is no Δ" in md
    assert "| CNN 224px | 82.3 | 0.500 ± 0.000 | — | 2 | 1 |\n" in md


def test_percent_metric_out_of_range_is_refused(tmp_path: Path) -> None:
    path = write_record(tmp_path, "a", make_record(acc=81.0))
    with pytest.raises(TableError, match=rf"^{path}: metric 'test/acc' is 81.0; .*fractions"):
        aggregate(load_records(tmp_path))


def test_missing_metric_names_the_file(tmp_path: Path) -> None:
    path = write_record(tmp_path, "a", make_record())
    with pytest.raises(TableError, match=rf"^{path}: finished run has no metric 'test/acc5'"):
        aggregate(load_records(tmp_path), metric="test/acc5")


def test_csv_rows_and_columns(runs: Path) -> None:
    rows = list(
        csv.DictReader(io.StringIO(render_csv(aggregate(load_records(runs), "test/acc", "cub"))))
    )
    assert list(rows[0]) == list(CSV_COLUMNS)
    assert [r["group"] for r in rows] == ["prior_work"] * 5 + ["paper"] * 4 + ["extra"] * 2
    cnn = rows[5]
    assert cnn["row"] == "CNN 224px"
    assert (cnn["ours_mean"], cnn["ours_std"], cnn["n"], cnn["failed"]) == (
        "81.6000",
        "0.8485",
        "2",
        "1",
    )
    assert cnn["delta"] == "-0.7000"
    assert rows[7]["unfinished"] == "1" and rows[7]["ours_mean"] == ""


def test_latex_uses_booktabs(runs: Path) -> None:
    tex = squeeze(render_latex(aggregate(load_records(runs), dataset="cub")))
    for rule in (r"\toprule", r"\midrule", r"\bottomrule", r"\begin{tabular}", r"\end{tabular}"):
        assert rule in tex
    assert r"CNN 224px & 82.3 & 81.6 $\pm$ 0.8 & --- & $-0.7$ & 2 & 1 \\" in tex
    assert "\n" + r"\emph{Extra cells (not in the paper)} & & & & & & \\" + "\n" in tex


def test_paper_numbers_come_from_the_packaged_csv() -> None:
    rows = load_paper_table()
    assert len(rows) == 9 and sum(r.is_prior_work for r in rows) == 5
    assert [(r.input_px, r.num_transformers, r.top1_acc) for r in rows[5:]] == [
        (224, 0, 82.3),
        (224, 2, 83.1),
        (448, 2, 83.9),
        (448, 4, 84.1),
    ]
    shared = Path("/work/shared/paper/cub_table.csv")
    if shared.exists():  # the packaged copy must stay byte-identical to the source
        packaged = REPO / "src/stnrepro/results/paper_cub_table.csv"
        assert packaged.read_bytes() == shared.read_bytes()


def test_custom_paper_table_changes_the_numbers(runs: Path) -> None:
    text = (
        "method,source,input_px,num_transformers,top1_acc\n"
        "CNN,Test,224,0,80.0\n"
        "2xST,Test,448,2,90.0\n"
    )
    table = aggregate(load_records(runs), dataset="cub", paper=load_paper_table(text))
    assert "| CNN 224px | 80.0 | 81.6 ± 0.8 | — | +1.6 | 2 | 1 |\n" in squeeze(
        render_markdown(table)
    )


# --------------------------------------------------------------------------- bad records


def _edit(change: Callable[[dict[str, Any]], object]) -> dict[str, Any]:
    record = make_record()
    change(record)
    return record


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        ("{not json", "not valid JSON"),
        ("", "empty file"),
        ("[1, 2]", "expected a JSON object, got list"),
        ({"schema_version": 1, "status": "finished"}, "missing required key 'run_name'"),
        (_edit(lambda r: r["cell"].pop("seed")), "missing required key 'cell.seed'"),
        (
            _edit(lambda r: r["cell"].update(image_size="448")),
            "key 'cell.image_size' must be an integer, got '448'",
        ),
        (
            _edit(lambda r: r["cell"].update(pretrained=1)),
            "key 'cell.pretrained' must be true or false, got 1",
        ),
        (
            _edit(lambda r: r.update(status="done")),
            "key 'status' must be one of finished, failed, interrupted, running",
        ),
        (_edit(lambda r: r.update(schema_version=2)), "unsupported schema_version 2"),
        (
            _edit(lambda r: r.update(metrics={"test/acc": "0.8"})),
            "metric 'metrics.test/acc' must be a number",
        ),
        (_edit(lambda r: r.update(finished_at=None)), "a finished run needs 'finished_at'"),
        (
            _edit(lambda r: r.update(finished_at="yesterday")),
            "key 'finished_at' must be an ISO-8601 timestamp",
        ),
    ],
)
def test_corrupt_record_is_refused_naming_the_file(
    tmp_path: Path, content: Any, problem: str
) -> None:
    write_record(tmp_path, "good", make_record())
    bad = write_record(tmp_path, "bad", content)
    with pytest.raises(RecordError) as err:
        load_records(tmp_path)
    message = str(err.value)
    assert message.startswith(f"{bad}: ") and problem in message
    assert "\n" not in message


def test_missing_and_empty_paths_are_refused(tmp_path: Path) -> None:
    with pytest.raises(RecordError, match="no such file or directory"):
        load_records(tmp_path / "nope")
    (tmp_path / "empty" / "deep").mkdir(parents=True)
    with pytest.raises(RecordError, match=re.escape("no metrics.json found under it")):
        load_records(tmp_path / "empty")


def test_a_single_record_file_can_be_read(tmp_path: Path) -> None:
    path = write_record(tmp_path, "a", make_record(acc=0.7))
    (record,) = load_records(path)
    assert isinstance(record, RunRecord) and record.metrics["test/acc"] == 0.7


# --------------------------------------------------------------------------- writing / CLI


def test_cli_writes_four_reproducible_files(
    runs: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "out"
    assert cli.main(["--runs", str(runs), "--dataset", "cub", "--out", str(out)]) == 0
    assert sorted(p.name for p in out.iterdir()) == sorted(OUTPUTS)
    assert (out / "cub_table.md").read_text(encoding="utf-8") == EXPECTED_MD
    assert (out / "cub_table.png").read_bytes().startswith(b"\x89PNG\r\n\x1a\n")
    assert r"\bottomrule" in (out / "cub_table.tex").read_text(encoding="utf-8")
    printed = capsys.readouterr().out
    assert "2xST-CNN 224px" in printed and "83.3 ± 0.4" in printed and "wrote " in printed

    first = {name: (out / name).read_bytes() for name in OUTPUTS}
    assert cli.main(["--runs", str(runs), "--dataset", "cub", "--out", str(out)]) == 0
    assert {name: (out / name).read_bytes() for name in OUTPUTS} == first


def test_cli_name_option(runs: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    argv = ["--runs", str(runs), "--dataset", "synth_birds", "--out", str(out)]
    assert cli.main(argv) == 0
    assert (out / "synth_birds_table.md").exists()
    assert cli.main([*argv, "--name", "demo"]) == 0
    assert (out / "demo.csv").exists()


@pytest.mark.parametrize(
    ("setup", "extra_args", "message"),
    [
        ("mixed", [], MIXED_MESSAGE),
        ("missing", [], "no such file or directory"),
        ("empty", [], "no metrics.json found"),
        ("corrupt", ["--dataset", "cub"], "bad/metrics.json: not valid JSON"),
        ("all_failed", [], "all 1 runs failed or are unfinished"),
    ],
)
def test_cli_errors_are_one_line_and_write_nothing(
    runs: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    setup: str,
    extra_args: list[str],
    message: str,
) -> None:
    path = {"mixed": runs, "missing": tmp_path / "nope", "empty": tmp_path / "empty"}.get(
        setup, runs
    )
    if setup == "empty":
        path.mkdir()
    elif setup == "corrupt":
        write_record(runs, "bad", "{")
    elif setup == "all_failed":
        path = tmp_path / "failed"
        write_record(path, "a", make_record(status="failed", acc=None))
    out = tmp_path / "out"
    assert cli.main(["--runs", str(path), "--out", str(out), *extra_args]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: ") and message in err
    assert not out.exists()


def test_failed_render_leaves_nothing_behind(
    runs: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    table = aggregate(load_records(runs), dataset="cub")

    def broken_plot(*args: Any, **kwargs: Any) -> None:
        raise RuntimeError("plot failed")

    monkeypatch.setattr(render_mod, "render_plot", broken_plot)
    out = tmp_path / "a" / "out"
    with pytest.raises(RuntimeError, match="plot failed"):
        write_table(table, out, "cub_table")
    assert not (tmp_path / "a").exists()

    out.mkdir(parents=True)
    (out / "cub_table.md").write_text("old\n")
    with pytest.raises(RuntimeError):
        write_table(table, out, "cub_table")
    assert [p.name for p in out.iterdir()] == ["cub_table.md"]
    assert (out / "cub_table.md").read_text() == "old\n"


def test_bad_table_name_is_refused(runs: Path, tmp_path: Path) -> None:
    table = aggregate(load_records(runs), dataset="cub")
    with pytest.raises(StnreproError, match="plain file stem"):
        write_table(table, tmp_path / "out", "../escape")
    assert not (tmp_path / "out").exists()


def test_cli_wandb_needs_group(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["--wandb", "me/stnrepro"]) == 2
    assert "--wandb needs --group" in capsys.readouterr().err


# --------------------------------------------------------------------------- attention

AttentionValues = tuple[float | None, float | None, float | None, float | None]


def st_metrics(
    *transformers: AttentionValues | None, stage: str = "test"
) -> dict[str, float | None]:
    """``{stage}/st{i}/iou, hit_center, hit_head, hit_body`` (+ a part rate); None = absent."""
    out: dict[str, float | None] = {}
    for i, values in enumerate(transformers):
        if values is None:
            continue
        for key, value in zip(("iou", "hit_center", "hit_head", "hit_body"), values, strict=True):
            out[f"{stage}/st{i}/{key}"] = value
        out[f"{stage}/st{i}/hit_beak"] = 0.5  # per-part rates exist but are not tabulated
    return out


@pytest.fixture
def attention_runs(tmp_path: Path) -> Path:
    """The ``runs`` layout, ST runs with attention metrics (see EXPECTED_ATTENTION_MD)."""
    root = tmp_path / "att"
    write_record(root, "sweep/0", make_record(seed=0, acc=0.810))
    write_record(root, "sweep/1", make_record(seed=1, acc=0.822))
    write_record(root, "sweep/2", make_record(seed=2, status="failed", acc=None))
    st2_s0 = st_metrics((0.40, 0.90, 0.80, 0.30), (0.35, 0.60, 0.20, 0.70))
    st2_s0 |= st_metrics((0.10, 0.10, 0.10, 0.10), (0.10, 0.10, 0.10, 0.10), stage="val")
    write_record(
        root,
        "st2-224-s0",
        make_record(
            nt=2, seed=0, acc=0.830, finished_at="2026-11-22T11:00:00Z", extra_metrics=st2_s0
        ),
    )
    # The older rerun of seed 0 is dropped: its (absurd) attention must not show up.
    write_record(
        root,
        "st2-224-s0-b",
        make_record(
            nt=2,
            seed=0,
            acc=0.800,
            finished_at="2026-11-22T09:00:00Z",
            extra_metrics=st_metrics((0.99, 0.99, 0.99, 0.99), (0.99, 0.99, 0.99, 0.99)),
        ),
    )
    # Seed 1: no visible head part was counted for st0 -> hit_head is null.
    st2_s1 = st_metrics((0.42, 0.94, None, 0.34), (0.37, 0.64, 0.26, 0.74))
    st2_s1 |= st_metrics((0.20, 0.30, 0.40, 0.50), (0.20, 0.30, 0.40, 0.50), stage="val")
    write_record(root, "st2-224-s1", make_record(nt=2, seed=1, acc=0.836, extra_metrics=st2_s1))
    write_record(root, "st2-448-s0", make_record(size=448, nt=2, status="running", acc=None))
    write_record(root, "cnn448-s0", make_record(size=448, acc=0.815))
    # 4xST: one seed; st3 lacks hit_body altogether (a missing key, not a null).
    st4 = st_metrics(
        (0.512, 0.873, 0.655, 0.401),
        (0.281, 0.5, 0.25, 0.75),
        (0.333, 0.667, 0.9, 0.1),
        (0.2, 0.3, 0.4, 0.6),
    )
    del st4["test/st3/hit_body"]
    write_record(root, "st4-224-s0", make_record(nt=4, acc=0.840, extra_metrics=st4))
    return root


ATTENTION_HEADER = """\
- Per transformer i of each ST row, from the runs the row's accuracy uses: \
{p}/st{{i}}/iou (mean IoU of its crop with the bird box), \
{p}/st{{i}}/hit_center (bird-box centre inside the crop), \
{p}/st{{i}}/hit_head and hit_body (visible head / body part points inside the crop), in %
- Mean ± sample std (n-1) over runs, std omitted for a single value; only non-null values \
count (null = nothing could be counted; missing metrics are skipped too): a cell from fewer \
runs than the row's n says (n=k), — when there is none
- CNN rows have no transformers and are not listed
"""

EXPECTED_ATTENTION_MD = (
    """
## Where the transformers look (test set)

"""
    + ATTENTION_HEADER.format(p="test")
    + """
| Method                               |   ST |    IoU (%) |   centre hit (%) |   head hit (%) |   body hit (%) |   n |
|:-------------------------------------|-----:|-----------:|-----------------:|---------------:|---------------:|----:|
| 2xST-CNN 224px                       |  st0 | 41.0 ± 1.4 |       92.0 ± 2.8 |     80.0 (n=1) |     32.0 ± 2.8 |   2 |
| 2xST-CNN 224px                       |  st1 | 36.0 ± 1.4 |       62.0 ± 2.8 |     23.0 ± 4.2 |     72.0 ± 2.8 |   2 |
| 2xST-CNN 448px                       |    — |          — |                — |              — |              — |   0 |
| 4xST-CNN 448px                       |    — |          — |                — |              — |              — |   0 |
| ***Extra cells (not in the paper)*** |      |            |                  |                |                |     |
| 4xST-CNN 224px                       |  st0 |       51.2 |             87.3 |           65.5 |           40.1 |   1 |
| 4xST-CNN 224px                       |  st1 |       28.1 |             50.0 |           25.0 |           75.0 |   1 |
| 4xST-CNN 224px                       |  st2 |       33.3 |             66.7 |           90.0 |           10.0 |   1 |
| 4xST-CNN 224px                       |  st3 |       20.0 |             30.0 |           40.0 |              — |   1 |
"""  # noqa: E501
)


def test_attention_markdown_is_the_documented_table(attention_runs: Path) -> None:
    table = aggregate(load_records(attention_runs), dataset="cub", attention=True)
    assert render_markdown(table) == EXPECTED_MD + EXPECTED_ATTENTION_MD


def test_without_attention_the_outputs_are_unchanged(attention_runs: Path, runs: Path) -> None:
    with_metrics = aggregate(load_records(attention_runs), dataset="cub")
    plain = aggregate(load_records(runs), dataset="cub")
    assert render_markdown(with_metrics) == EXPECTED_MD
    assert render_csv(with_metrics) == render_csv(plain)
    assert render_latex(with_metrics) == render_latex(plain)
    on = aggregate(load_records(attention_runs), dataset="cub", attention=True)
    assert render_markdown(on, attention=False) == EXPECTED_MD
    assert render_csv(on, attention=False) == render_csv(plain)
    assert render_latex(on, attention=False) == render_latex(plain)


def test_attention_follows_the_metric_stage(attention_runs: Path) -> None:
    table = aggregate(load_records(attention_runs), "val/acc", "cub", attention=True)
    md = squeeze(render_markdown(table))
    assert "\n## Where the transformers look (validation set)\n" in md
    assert ATTENTION_HEADER.format(p="val") in md
    assert (
        "| 2xST-CNN 224px | st0 | 15.0 ± 7.1 | 20.0 ± 14.1 | 25.0 ± 21.2 | 30.0 ± 28.3 | 2 |" in md
    )
    # The 4xST run has no val/st* keys: every cell is missing, not zero.
    assert "| 4xST-CNN 224px | st3 | — | — | — | — | 1 |" in md


def test_attention_csv_columns(attention_runs: Path) -> None:
    table = aggregate(load_records(attention_runs), dataset="cub", attention=True)
    rows = list(csv.DictReader(io.StringIO(render_csv(table))))
    keys = ("iou", "hit_center", "hit_head", "hit_body")
    extra = [f"st{i}_{m}_{p}" for i in range(4) for m in keys for p in ("mean", "std", "n")]
    assert list(rows[0]) == [*CSV_COLUMNS, *extra]
    by_label = {r["row"]: r for r in rows}
    st2 = by_label["2xST-CNN 224px"]
    assert (st2["st0_iou_mean"], st2["st0_iou_std"], st2["st0_iou_n"]) == ("41.0000", "1.4142", "2")
    assert (st2["st0_hit_head_mean"], st2["st0_hit_head_std"], st2["st0_hit_head_n"]) == (
        "80.0000",
        "",
        "1",
    )
    assert st2["st2_iou_mean"] == st2["st2_iou_n"] == ""  # a 2xST row has no st2
    st4 = by_label["4xST-CNN 224px"]
    assert (st4["st3_hit_body_mean"], st4["st3_hit_body_n"]) == ("", "0")
    assert all(v == "" for k, v in by_label["CNN 224px"].items() if k in extra)
    assert all(v == "" for k, v in by_label["2xST-CNN 448px"].items() if k in extra)


def test_attention_latex_is_a_second_booktabs_tabular(attention_runs: Path) -> None:
    table = aggregate(load_records(attention_runs), dataset="cub", attention=True)
    tex = render_latex(table)
    assert tex.startswith(render_latex(table, attention=False))
    tex = squeeze(tex)
    assert tex.count(r"\begin{tabular}") == tex.count(r"\bottomrule") == 3  # + the claims
    assert "% Where the transformers look (test set)\n" in tex
    assert (
        r"Method & ST & IoU (\%) & centre hit (\%) & head hit (\%) & body hit (\%) & $n$ \\" in tex
    )
    assert r"2xST-CNN 224px & st0 & 41.0 $\pm$ 1.4 & 92.0 $\pm$ 2.8 & 80.0 ($n$=1) & " in tex
    assert "\n" + r"\emph{Extra cells (not in the paper)} & & & & & & \\" + "\n" in tex
    assert r"4xST-CNN 224px & st3 & 20.0 & 30.0 & 40.0 & --- & 1 \\" in tex


def test_attention_values_outside_0_1_are_refused(tmp_path: Path) -> None:
    path = write_record(
        tmp_path,
        "a",
        make_record(nt=2, extra_metrics=st_metrics((41.0, 0.9, 0.8, 0.3), (0.3, 0.6, 0.2, 0.7))),
    )
    assert aggregate(load_records(tmp_path)).attention is False  # not read without the flag
    with pytest.raises(TableError, match=rf"^{path}: metric 'test/st0/iou' is 41.0; .*\[0, 1\]"):
        aggregate(load_records(tmp_path), attention=True)


def test_attention_without_st_rows_says_so(tmp_path: Path) -> None:
    write_record(tmp_path, "a", make_record())
    paper = load_paper_table("method,source,input_px,num_transformers,top1_acc\nCNN,T,224,0,80\n")
    table = aggregate(load_records(tmp_path), paper=paper, attention=True)
    assert render_markdown(table).endswith("listed\n\nNo ST rows in this table.\n")
    assert next(iter(csv.reader(io.StringIO(render_csv(table))))) == list(CSV_COLUMNS)


def test_cli_with_attention_writes_and_prints_it(
    attention_runs: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    out = tmp_path / "out"
    argv = ["--runs", str(attention_runs), "--dataset", "cub", "--out", str(out)]
    assert cli.main(argv) == 0
    assert (out / "cub_table.md").read_text(encoding="utf-8") == EXPECTED_MD
    assert "Where the transformers look" not in capsys.readouterr().out

    assert cli.main([*argv, "--with-attention"]) == 0
    assert sorted(p.name for p in out.iterdir()) == sorted(OUTPUTS)
    md = (out / "cub_table.md").read_text(encoding="utf-8")
    assert md == EXPECTED_MD + EXPECTED_ATTENTION_MD
    assert (out / "cub_table.tex").read_text(encoding="utf-8").count(r"\begin{tabular}") == 3
    assert "st3_hit_body_mean" in (out / "cub_table.csv").read_text(encoding="utf-8")
    printed = capsys.readouterr().out
    assert "\nWhere the transformers look (test set)\n" in printed
    assert "80.0 (n=1)" in printed and "41.0 ± 1.4" in printed


# --------------------------------------------------------------------------- W&B conversion


class SubDict:
    """Stands in for wandb's SummarySubDict: dict-like but not a Mapping."""

    def __init__(self, data: dict[str, Any]) -> None:
        self._data = data

    def get(self, key: str, default: Any = None) -> Any:
        value = self._data.get(key, default)
        return SubDict(value) if isinstance(value, dict) else value

    def items(self) -> list[tuple[str, Any]]:
        return [(k, SubDict(v) if isinstance(v, dict) else v) for k, v in self._data.items()]


def fake_run(record: dict[str, Any] | None, state: str = "finished") -> SimpleNamespace:
    summary = {"test/acc": 0.8} if record is None else {"record": record, "test/acc": 0.8}
    return SimpleNamespace(
        summary=SubDict(summary),
        config={"seed": 1, "model": {"num_transformers": 2}},
        state=state,
        id="abc123",
        name="2xST-224-s1",
        created_at="2026-11-22T10:00:00Z",
    )


def test_wandb_finished_run_matches_the_local_record() -> None:
    data = make_record(nt=2, seed=1, acc=0.83)
    record = record_from_wandb_run(fake_run(copy.deepcopy(data)))
    local = RunRecord.from_dict(data, source="local")
    assert record.status == "finished" and record.cell == local.cell
    assert record.metrics == local.metrics and record.finished_at == local.finished_at
    assert record.source == "wandb run abc123 (2xST-224-s1)"
    assert record.config == current_names(data["config"])  # the record's own definition


def test_wandb_record_without_config_uses_the_logged_config_flattened() -> None:
    data = make_record(nt=2, seed=1, acc=0.83, config=None, provenance=None)
    record = record_from_wandb_run(fake_run(data))
    # The logged config is read as a run definition: keys added since are filled in.
    assert record.config == {**ADDED_KEYS, "model.num_transformers": 2, "seed": 1}
    assert record.provenance is None


@pytest.mark.parametrize(
    ("state", "status"),
    [("crashed", "failed"), ("failed", "failed"), ("killed", "failed"), ("running", "running")],
)
def test_wandb_state_overrides_a_finished_record(state: str, status: str) -> None:
    record = record_from_wandb_run(fake_run(make_record(acc=0.83), state=state))
    assert record.status == status
    if status == "failed":
        assert record.error == "RuntimeError: boom" or state in (record.error or "")


def test_wandb_crash_without_error_message_gets_one() -> None:
    data = make_record()
    data["error"] = None
    record = record_from_wandb_run(fake_run(data, state="crashed"))
    assert record.status == "failed" and record.error == "W&B run state is 'crashed'"


def test_wandb_overridden_runs_are_excluded_from_the_table() -> None:
    records = [
        record_from_wandb_run(fake_run(make_record(seed=0, acc=0.80))),
        record_from_wandb_run(fake_run(make_record(seed=1, acc=0.99), state="crashed")),
    ]
    table = aggregate(records)
    row = next(r for r in table.rows if r.label == "CNN 224px")
    assert row.stats is not None and (row.stats.n, row.stats.failed) == (1, 1)


def test_wandb_run_without_record_is_refused() -> None:
    with pytest.raises(RecordError, match=r"^wandb run abc123 \(2xST-224-s1\): summary has no"):
        record_from_wandb_run(fake_run(None))


def test_wandb_record_is_validated_like_a_file() -> None:
    data = make_record()
    data["cell"]["image_size"] = "big"
    with pytest.raises(RecordError, match=r"wandb run abc123 .*'cell.image_size' must be an int"):
        record_from_wandb_run(fake_run(data))


def test_real_wandb_summary_objects_are_converted() -> None:
    summary_mod = pytest.importorskip("wandb.apis.public.summary")
    summary = summary_mod.Summary(SimpleNamespace(dir="."), summary={"record": make_record(nt=2)})
    run = fake_run(None)
    run.summary = summary
    record = record_from_wandb_run(run)
    assert record.cell.num_transformers == 2 and record.metrics["test/acc"] == 0.8


# --------------------------------------------------------------------------- one renderer


def test_terminal_shows_the_markdown_cells_within_80_columns(runs: Path) -> None:
    table = aggregate(load_records(runs), dataset="cub")
    text = render_terminal(table)
    md = render_markdown(table)
    notes = [line[2:] for line in md.split("\n\n|")[0].splitlines() if line.startswith("- ")]
    assert text.startswith(f"Comparison with {table.paper_source}\n" + "\n".join(notes) + "\n")
    body = text.split("\n\n")[1]  # the main table (the claims section follows)
    assert all(len(line) <= 80 for line in body.splitlines())
    assert "\nCNN 224px 82.3 81.6 ± 0.8 — -0.7 2 1\n" in squeeze(body)
    assert "\nExtra cells\n" in body


def test_latex_negative_mean_is_not_wrapped_in_math(tmp_path: Path) -> None:
    """Only Δ is a signed number: a negative mean with ± used to become ``$-0.500 $\\pm$ ...$``."""
    for seed, value in enumerate((-0.4, -0.6)):
        write_record(tmp_path, str(seed), make_record(seed=seed, extra_metrics={"test/m": value}))
    tex = squeeze(render_latex(aggregate(load_records(tmp_path), metric="test/m")))
    assert r"CNN 224px & 82.3 & -0.500 $\pm$ 0.141 & --- & 2 & 0 \\" in tex


def test_a_run_refused_for_a_bad_value_counts_as_failed_in_no_cell(runs: Path) -> None:
    """Its record has null for the bad cell value; the table reads it and counts it."""
    bad = make_record(nt=2, seed=5, status="failed", acc=None)
    bad["cell"]["num_transformers"] = None
    bad["error"] = "ConfigError: model.num_transformers=-1: expected an integer >= 0"
    write_record(runs, "bad", bad)
    table = aggregate(load_records(runs), dataset="cub")
    assert table.n_failed == 2 and table.n_used == 6  # the sweep's failed seed and this one
    assert all(row.stats is None or row.stats.failed <= 1 for row in table.rows)
