"""The ``stn-data`` / ``stn-attention`` commands and the scripts/ shims that call them."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from stnrepro.cli.attention import main as stn_attention
from stnrepro.cli.data import main as stn_data

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize(
    ("script", "option"),
    [
        ("make_synthetic.py", "--images-per-class"),
        ("check_data.py", "--workers"),
        ("download_cub.py", "--keep-archive"),
        ("show_attention.py", "--no-metrics"),
    ],
)
def test_scripts_are_shims_for_the_commands(script: str, option: str) -> None:
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    proc = subprocess.run(
        [sys.executable, str(REPO / "scripts" / script), "--help"],
        capture_output=True, text=True, timeout=120, env=env,
    )  # fmt: skip
    assert proc.returncode == 0 and option in proc.stdout, proc.stderr


@pytest.mark.parametrize(
    ("main", "argv", "expected"),
    [
        (stn_data, [], "stn-data: the following arguments are required: COMMAND"),
        (stn_data, ["check"], "stn-data check: the following arguments are required: root"),
        (stn_data, ["download", "--out", "d", "--bogus"], "unrecognized arguments: --bogus"),
        (stn_attention, [], "stn-attention: the following arguments are required: checkpoint"),
        (stn_attention, ["x.ckpt", "--images", "two"], "--images: invalid int value: 'two'"),
    ],
)
def test_usage_errors_are_one_line_exit_2(main, argv, expected, capsys) -> None:
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and expected in err, err


def test_help_exits_0(capsys) -> None:
    assert stn_data(["--help"]) == 0
    out = capsys.readouterr().out
    assert all(name in out for name in ("generate", "check", "download"))
