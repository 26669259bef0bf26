"""The commands' one convention: --help with examples, bad input one ``error:`` line, exit 2."""

from __future__ import annotations

import importlib
from pathlib import Path

import pytest

from stnrepro.cli.attention import main as stn_attention
from stnrepro.cli.data import main as stn_data

REPO = Path(__file__).resolve().parents[1]


COMMANDS = {
    "stn-data": "stnrepro.cli.data",
    "stn-attention": "stnrepro.cli.attention",
    "stn-table": "stnrepro.cli.table",
    "stn-bench": "stnrepro.cli.bench",
    "stn-dash": "stnrepro.cli.dash",
}


def test_every_console_script_is_listed_here() -> None:
    import tomllib

    scripts = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]
    assert set(scripts) == {"stn-train", *COMMANDS}
    for name, module in COMMANDS.items():
        assert scripts[name] == f"{module}:main"


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_every_command_follows_one_convention(name: str, capsys) -> None:
    """--help shows examples (exit 0); an unknown option is one ``error:`` line, exit 2."""
    main = importlib.import_module(COMMANDS[name]).main
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    assert (
        out.startswith(f"usage: {name}")
        and "examples:" in out
        and name in out.split("examples:")[1]
    )
    assert main(["--no-such-option"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1, err


def test_stn_bench_without_a_gpu_is_one_line_exit_2(capsys) -> None:
    import torch

    from stnrepro.cli.bench import main

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    assert main(["--device", "cuda"]) == 2
    assert capsys.readouterr().err == (
        "error: --device cuda: no CUDA device is available on this machine\n"
    )


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
