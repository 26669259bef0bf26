"""The table and run provenance: environments stated and compared, cells agree up to the seed."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
from test_table import make_record, squeeze, write_record

from stnrepro.cli import table as cli
from stnrepro.records.reader import load_records
from stnrepro.results.aggregate import aggregate
from stnrepro.results.model import TableError
from stnrepro.results.render import render_csv, render_latex, render_markdown, render_terminal

SWEEP_MESSAGE = (
    "cell 2xST-224: runs differ in model.fixed_scale (0.3, 0.5); split the table with "
    "--split-by model.fixed_scale or pick runs"
)


def _table(root: Path):
    return aggregate(load_records(root), dataset="cub")


def _csv_row(text: str, label: str) -> dict[str, str]:
    return next(r for r in csv.DictReader(text.splitlines()) if r["row"] == label)


def test_a_sweep_over_a_model_key_is_refused_not_deduplicated(tmp_path: Path) -> None:
    # Same seed: the old table kept one and reported the other as a "duplicate dropped".
    write_record(tmp_path, "a", make_record(nt=2, config={"model.fixed_scale": 0.5}))
    write_record(tmp_path, "b", make_record(nt=2, config={"model.fixed_scale": 0.3}))
    with pytest.raises(TableError) as info:
        _table(tmp_path)
    assert str(info.value) == SWEEP_MESSAGE


def test_runs_of_different_length_are_never_averaged(tmp_path: Path) -> None:
    write_record(tmp_path, "a", make_record(seed=0, config={"trainer.max_epochs": 0}))
    write_record(tmp_path, "b", make_record(seed=1, config={"trainer.max_epochs": 1}))
    with pytest.raises(TableError, match=r"^cell CNN-224: runs differ in trainer.max_epochs"):
        _table(tmp_path)


def test_a_key_only_some_runs_have_counts_as_differing(tmp_path: Path) -> None:
    write_record(tmp_path, "a", make_record(seed=0, config={"model.sampler": "fast"}))
    write_record(tmp_path, "b", make_record(seed=1))
    with pytest.raises(TableError, match=r"model.sampler \(<unset>, fast\)"):
        _table(tmp_path)


def test_split_by_gives_one_table_per_value(tmp_path: Path, capsys) -> None:
    runs, out = tmp_path / "runs", tmp_path / "out"
    write_record(runs, "a", make_record(nt=2, acc=0.8, config={"model.fixed_scale": 0.5}))
    write_record(runs, "b", make_record(nt=2, acc=0.7, config={"model.fixed_scale": 0.3}))
    assert cli.main(["--runs", str(runs), "--out", str(out)]) == 2
    assert capsys.readouterr().err == f"error: {SWEEP_MESSAGE}\n"
    assert not out.exists()

    argv = ["--runs", str(runs), "--out", str(out), "--split-by", "model.fixed_scale"]
    assert cli.main(argv) == 0
    for value, mean in (("0.3", "70.0000"), ("0.5", "80.0000")):
        text = (out / f"cub_table-model.fixed_scale={value}.csv").read_text()
        row = _csv_row(text, "2xST-CNN 224px")
        assert (row["n"], row["duplicates"], row["ours_mean"]) == ("1", "0", mean)
    assert len(list(out.iterdir())) == 10  # two sets of .md/.csv/.tex/.png/_claims.csv
    assert "== cub_table-model.fixed_scale=0.3" in capsys.readouterr().out


def test_split_by_an_unknown_key_or_an_old_record_is_refused(tmp_path: Path, capsys) -> None:
    write_record(tmp_path, "a", make_record(seed=0))
    argv = ["--runs", str(tmp_path), "--out", str(tmp_path / "out"), "--split-by", "model.nope"]
    assert cli.main(argv) == 2
    assert "--split-by model.nope: no run has this config key" in capsys.readouterr().err
    write_record(tmp_path, "old", make_record(seed=1, config=None))
    assert cli.main(argv) == 2
    assert "old/metrics.json: record has no config" in capsys.readouterr().err


def test_different_seeds_only_are_merged_as_before(tmp_path: Path) -> None:
    write_record(tmp_path, "a", make_record(seed=0, acc=0.80))
    write_record(tmp_path, "b", make_record(seed=1, acc=0.82))
    row = next(r for r in _table(tmp_path).rows if r.label == "CNN 224px")
    assert row.stats is not None and row.stats.n == 2 and row.stats.duplicates == 0
    assert row.env_differs == ()


def test_records_without_config_are_compared_on_cell_keys_with_a_note(tmp_path: Path) -> None:
    write_record(tmp_path, "a", make_record(seed=0, config=None))
    write_record(tmp_path, "b", make_record(seed=1, config=None))
    table = _table(tmp_path)
    assert table.n_no_config == 2
    assert (
        "- 2 runs without a recorded config (older records): compared on the cell keys only, "
        "other settings could differ" in render_markdown(table)
    )


def test_records_without_provenance_are_an_unknown_environment(tmp_path: Path) -> None:
    write_record(tmp_path, "a", make_record(seed=0, provenance=None))
    write_record(tmp_path, "b", make_record(seed=1, provenance=None))
    table = _table(tmp_path)
    for text in (render_markdown(table), render_terminal(table), render_latex(table)):
        assert "Environment: unknown environment (records without provenance)" in text
    assert "†" not in render_markdown(table)


def test_every_output_states_the_environment(tmp_path: Path) -> None:
    write_record(tmp_path, "a", make_record(seed=0))
    table = _table(tmp_path)
    line = (
        "Environment: torch 2.14.1, torchvision 0.29.1, lightning 2.6.6, "
        "CPU Intel(R) Xeon(R) Platinum 8480+ (AVX512), 2 threads, fp32; data cub index ab12cd34"
    )
    assert f"\n- {line}\n" in render_markdown(table)
    assert f"\n% {line}\n" in render_latex(table)
    assert f"\n{line}\n" in render_terminal(table)
    row = _csv_row(render_csv(table), "CNN 224px")
    assert row["environment"] == line.removeprefix("Environment: ")
    assert row["environment_differs"] == ""


def test_a_row_mixing_environments_is_marked_and_says_what_differs(tmp_path: Path) -> None:
    gpu = {"name": "NVIDIA H200", "cuda": "13.0", "cudnn": "91300"}
    write_record(tmp_path, "a", make_record(seed=0, provenance={"threads": 1}))
    write_record(tmp_path, "b", make_record(seed=1, provenance={"threads": 2}))
    write_record(tmp_path, "c", make_record(nt=4, seed=0, provenance={"gpu": gpu}))
    write_record(tmp_path, "d", make_record(nt=4, seed=1, provenance=None))
    table = _table(tmp_path)
    md = render_markdown(table)
    assert (
        "- † CNN 224px: its runs come from different environments, they differ in threads (1, 2)\n"
        in md
    )
    assert (
        "- † 4xST-CNN 224px: its runs come from different environments, they differ in "
        "provenance (unknown for 1 of 2 runs)\n" in md
    )
    assert "| CNN 224px † " in squeeze(md) and "| 4xST-CNN 224px † " in squeeze(md)
    assert "Environment 1 of 4 (1 run): " in md and "GPU NVIDIA H200 (CUDA 13.0, cuDNN 91300)" in md
    row = _csv_row(render_csv(table), "CNN 224px")
    assert row["environment_differs"] == "threads (1, 2)"
    assert row["environment"].count(" | ") == 1


def test_library_versions_and_data_differences_are_named(tmp_path: Path) -> None:
    versions = dict(make_record()["provenance"]["versions"], torch="2.15.0")
    data = {"kind": "synthetic", "preset": "synth_birds_tiny", "generator_version": 1,
            "gen_seed": 1, "settings_hash": "0123456789"}  # fmt: skip
    write_record(tmp_path, "a", make_record(seed=0))
    write_record(tmp_path, "b", make_record(seed=1, provenance={"versions": versions}))
    write_record(tmp_path, "c", make_record(seed=2, provenance={"dataset": data}))
    (row,) = [r for r in _table(tmp_path).rows if r.label == "CNN 224px"]
    assert row.env_differs == (
        "torch (2.14.1, 2.15.0)",
        "data (cub index ab12cd34, synth_birds_tiny v1 seed 1 01234567)",
    )


def test_split_values_that_give_one_file_name_are_refused(tmp_path: Path, capsys) -> None:
    """``a/b`` and ``a_b`` both became ``-k=a_b``: the second table replaced the first."""
    runs, out = tmp_path / "runs", tmp_path / "out"
    write_record(runs, "a", make_record(nt=2, config={"model.sampler": "a/b"}))
    write_record(runs, "b", make_record(nt=2, config={"model.sampler": "a_b"}))
    argv = ["--runs", str(runs), "--out", str(out), "--split-by", "model.sampler"]
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert "the values a/b and a_b both give the file name suffix '-model.sampler=a_b'" in err
    assert not out.exists()


def test_control_characters_from_a_record_cannot_break_the_tables_lines(tmp_path: Path) -> None:
    name = "cub\n\\end{tabular} | x"
    write_record(tmp_path, "a", make_record(dataset=name))
    table = aggregate(load_records(tmp_path))
    assert table.dataset == "cub\\n\\end{tabular} | x"
    for text in (render_markdown(table), render_latex(table), render_terminal(table)):
        assert "cub\n" not in text and "cub\\n" in text.replace("\\textbackslash{}", "\\")


def test_a_table_to_a_read_only_folder_is_one_line(tmp_path: Path, capsys) -> None:
    import subprocess

    write_record(tmp_path / "runs", "a", make_record())
    ro = tmp_path / "ro"
    ro.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=1m", "tmpfs", str(ro)],
                          capture_output=True, text=True)  # fmt: skip
    if done.returncode != 0:
        pytest.skip(f"cannot mount a read-only tmpfs here: {done.stderr.strip()}")
    try:
        assert cli.main(["--runs", str(tmp_path / "runs"), "--out", str(ro)]) == 2
        err = capsys.readouterr().err.strip()
        assert err == f"error: {ro}: cannot write the table (Read-only file system)"
    finally:
        subprocess.run(["umount", "-l", str(ro)], check=False)


def test_values_matplotlib_cannot_plot_are_one_line(tmp_path: Path, capsys) -> None:
    write_record(tmp_path / "runs", "a", make_record(extra_metrics={"test/loss": 1e308}))
    write_record(tmp_path / "runs", "b", make_record(seed=1, extra_metrics={"test/loss": 0.1}))
    out = tmp_path / "out"
    argv = ["--runs", str(tmp_path / "runs"), "--out", str(out), "--metric", "test/loss"]
    assert cli.main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert "cub_table.png: cannot plot the test/loss values" in err and "\n" not in err
    assert not out.exists()
