"""stn-dash: a sweep's runs in W&B's local dashboard, checked on the real ``wandb leet``.

The slow tests make one small real sweep per module (three runs of two groups through the
training CLI: two finished, one diverged), start the dashboard in a private tmux server
and read its screen; they skip, saying why, where tmux or ``wandb leet`` cannot start.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import uuid
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace

import pytest

from stnrepro.cli.dash import DashRun, find_runs, link_name, main, select
from stnrepro.records.reader import read_record_file, record_from_wandb_run
from stnrepro.records.schema import RunRecord

TINY = [
    "data=synth_birds_tiny", "data.images_per_class=6", "data.image_width=64",
    "data.image_height=48", "data.gen_workers=1", "data.num_workers=0", "data.batch_size=8",
    "data.image_size=32", "model.crop_size=16", "model.backbone=small", "model.pretrained=false",
    "trainer=cpu", "trainer.max_epochs=1", "trainer.enable_progress_bar=false",
    "logger=wandb", "tags=[dash,tiny]",
]  # fmt: skip


def _env(tmp: Path) -> dict[str, str]:
    env = os.environ | {
        "WANDB_MODE": "offline",
        "WANDB_SILENT": "true",
        "WANDB_CONFIG_DIR": str(tmp / "wandb-config"),  # leet's settings: not the user's
    }
    env.pop("WANDB_API_KEY", None)
    env.pop("WANDB_SERVICE", None)
    return env


@pytest.fixture(scope="module")
def sweep(tmp_path_factory) -> Path:
    """``runs/a``: CNN-32-s0 and 2xST-32-s0 finished; ``runs/b``: CNN-32-s1 diverged."""
    tmp = tmp_path_factory.mktemp("dash")
    for name, args, status in (
        ("a", ["model.num_transformers=0,2"], 0),
        ("b", ["seed=1", "model.optimizer.lr=1e30"], 1),  # a sweep with a failed job exits 1
    ):
        proc = subprocess.run(
            [sys.executable, "-m", "stnrepro.train", "-m", *TINY, *args,
             f"hydra.sweep.dir={tmp / 'runs' / name}"],
            capture_output=True, text=True, timeout=600, env=_env(tmp), cwd=tmp,
        )  # fmt: skip
        assert proc.returncode == status, proc.stderr[-3000:]
    return tmp / "runs"


def _records(sweep: Path) -> dict[str, dict]:
    found = [json.loads(p.read_text()) for p in sorted(sweep.glob("*/*/metrics.json"))]
    return {r["run_name"]: r for r in found}


@pytest.mark.slow
def test_the_sweep_is_what_the_tests_expect(sweep):
    statuses = {name: r["status"] for name, r in _records(sweep).items()}
    assert statuses == {"CNN-32-s0": "finished", "2xST-32-s0": "finished", "CNN-32-s1": "failed"}


# --------------------------------------------------------------------------- the folder


@pytest.mark.slow
def test_print_makes_one_link_per_run_folder_named_after_the_run(sweep, tmp_path, capsys):
    out = tmp_path / "dash"
    assert main([str(sweep), "--out", str(out), "--print"]) == 0
    printed = capsys.readouterr()
    folder, command = printed.out.splitlines()
    assert folder == str(out) and command.endswith(f"wandb leet {out}")
    assert "3 runs (1 failed, 2 finished) of groups " in printed.err
    links = {p.name: p for p in out.iterdir() if p.is_symlink()}
    targets = {p.resolve() for p in sweep.glob("*/*/wandb/offline-run-*")}
    assert {p.resolve() for p in links.values()} == targets and len(links) == 3
    shown = {name.split(".offline-run-")[0] for name in links}
    assert shown == {"run-CNN-32-s0", "run-2xST-32-s0", "run-CNN-32-s1 (failed)"}
    assert not any(p.is_symlink() for p in sweep.rglob("*") if "wandb" not in p.parts)


@pytest.mark.slow
def test_the_folder_is_made_afresh_with_the_selection(sweep, tmp_path, capsys):
    out = tmp_path / "dash"
    assert main([str(sweep), "--out", str(out), "--print"]) == 0
    (out / ".wandb-leet.json").write_text("{}")  # leet's own state: kept
    assert main([str(sweep), "--out", str(out), "--print", "--name", "CNN-*", "--tag", "dash",
                 "--where", "seed=0"]) == 0  # fmt: skip
    names = sorted(p.name.split(".")[0] for p in out.iterdir() if p.is_symlink())
    assert names == ["run-CNN-32-s0"] and (out / ".wandb-leet.json").exists()
    assert all(p.exists() for p in sweep.glob("*/*/wandb/offline-run-*"))  # nothing moved
    group = _records(sweep)["CNN-32-s0"]["logger"]["group"]
    assert main([str(sweep), "--out", str(out), "--print", "--group", group,
                 "--where", "model.num_transformers=2"]) == 0  # fmt: skip
    names = sorted(p.name.split(".")[0] for p in out.iterdir() if p.is_symlink())
    assert names == ["run-2xST-32-s0"]
    capsys.readouterr()
    assert main([str(sweep), "--out", str(out), "--print", "--name", "4xST-*"]) == 2
    assert capsys.readouterr().err == f"error: {sweep}: no run matches the selection\n"
    assert [p.name.split(".")[0] for p in out.iterdir() if p.is_symlink()] == ["run-2xST-32-s0"]


# --------------------------------------------------------------------------- leet itself


def _leet_or_skip(env: dict[str, str]) -> None:
    if shutil.which("tmux") is None:
        pytest.skip("tmux is not installed (.ci/run installs it: apt-get install -y tmux)")
    wandb = Path(sys.executable).parent / "wandb"
    proc = subprocess.run(
        [str(wandb), "leet", "--help"], capture_output=True, text=True, env=env, timeout=120
    )
    if proc.returncode != 0:
        pytest.skip(f"wandb leet cannot start: {(proc.stderr or proc.stdout).strip()[-300:]}")


class Tmux:
    """A private tmux server (its own socket), stopped by its PID when the test ends."""

    def __init__(self, env: dict[str, str]) -> None:
        self.socket = f"stn-dash-test-{uuid.uuid4().hex[:8]}"
        self.env = env
        self.pid: int | None = None

    def __call__(self, *args: str) -> str:
        proc = subprocess.run(
            ["tmux", "-L", self.socket, *args],
            capture_output=True, text=True, env=self.env, timeout=30,
        )  # fmt: skip
        if proc.returncode != 0:
            raise RuntimeError(f"tmux {' '.join(args)}: {proc.stderr.strip()}")
        return proc.stdout

    def start(self, command: str, cwd: Path) -> None:
        try:
            self("new-session", "-d", "-s", "dash", "-x", "200", "-y", "50", "-c", str(cwd),
                 command)  # fmt: skip
            self.pid = int(self("display-message", "-p", "#{pid}").strip())
        except RuntimeError as exc:
            pytest.skip(f"tmux cannot start a session here: {exc}")

    def screen(self) -> str:
        return self("capture-pane", "-p", "-t", "dash")

    def wait_for(self, text: str, timeout: float = 60.0) -> str:
        deadline = time.monotonic() + timeout
        while True:
            screen = self.screen()
            if text in screen or time.monotonic() > deadline:
                return screen
            time.sleep(0.3)

    def stop(self) -> None:
        subprocess.run(["tmux", "-L", self.socket, "kill-server"], capture_output=True)
        if self.pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signal.SIGKILL)


def _overview_name(screen: str) -> str | None:
    for line in screen.splitlines():
        if "Name: " in line:
            return line.split("Name: ")[1].split()[0]
    return None


@pytest.mark.slow
def test_leet_lists_every_run_and_shows_the_selected_ones_name(sweep, tmp_path):
    env = _env(tmp_path)
    _leet_or_skip(env)
    out, done = tmp_path / "dash", tmp_path / "status"
    tmux = Tmux(env)
    try:
        tmux.start(
            f"{sys.executable} -m stnrepro.cli.dash {sweep} --out {out}; echo $? > {done}",
            tmp_path,
        )
        screen = tmux.wait_for("Runs [3 items]")
        assert "Runs [3 items]" in screen, f"the dashboard did not list 3 runs:\n{screen}"
        rows = [line.split("│")[0] for line in screen.splitlines()[1:4]]
        listed = [row.split("run-", 1)[1].split(".offline")[0] for row in rows]
        assert sorted(listed) == ["2xST-32-s0", "CNN-32-s0", "CNN-32-s1 (failed)"]
        records = _records(sweep)
        for i, item in enumerate(listed):  # select each run in turn (space; the first is)
            tmux("send-keys", "-t", "dash", "Home", *["Down"] * i)
            if rows[i].split()[0] == "○":  # not selected yet (● selected, ▶ pinned)
                tmux("send-keys", "-t", "dash", "Space")
            name = item.split(" (")[0]
            state = "Failed" if records[name]["status"] == "failed" else "Finished"
            deadline = time.monotonic() + 20
            while not (
                _overview_name(screen := tmux.screen()) == name and f"State: {state}" in screen
            ):
                assert time.monotonic() < deadline, f"row {i} ({item}) shows:\n{screen}"
                time.sleep(0.3)
        assert re.search(r"Tags:\s+dash\s+tiny", screen), screen
        tmux("send-keys", "-t", "dash", "q")
        deadline = time.monotonic() + 20
        while not done.exists() and time.monotonic() < deadline:
            time.sleep(0.2)
        assert done.read_text().strip() == "0"
    finally:
        tmux.stop()


@pytest.mark.slow
def test_leet_inspect_summary_of_each_run_agrees_with_its_record(sweep, tmp_path):
    """Status, test/acc and the cell as W&B's own reader sees them; the record as one value
    (as a nested dict its ~300 keys buried test/acc in the dashboard's summary list)."""
    env = _env(tmp_path)
    wandb = Path(sys.executable).parent / "wandb"
    for job in sorted(sweep.glob("*/*/metrics.json")):
        record = json.loads(job.read_text())
        (folder,) = job.parent.glob("wandb/offline-run-*")
        proc = subprocess.run(
            [str(wandb), "leet", "inspect", "--summary", "--json", str(folder)],
            capture_output=True, text=True, env=env, timeout=120,
        )  # fmt: skip
        if proc.returncode != 0 and "wandb-core" in proc.stderr:
            pytest.skip(f"wandb leet inspect cannot start: {proc.stderr.strip()[-300:]}")
        assert proc.returncode == 0, proc.stderr
        seen = json.loads(proc.stdout)
        assert seen["name"] == record["run_name"] and seen["tags"] == ["dash", "tiny"]
        assert seen["state"] == record["status"]  # finished / failed
        summary = seen["summary"]
        assert summary["status"] == record["status"] and summary["cell"] == record["cell"]
        assert json.loads(summary["record"]) == record
        assert not [k for k in summary if k.startswith("record.")]
        # stn-table --wandb reads the same record back from the cloud run's summary.
        cloud = SimpleNamespace(summary=summary, state=seen["state"], id=seen["run_id"],
                                name=seen["name"], config={}, created_at=None)  # fmt: skip
        source = f"wandb run {seen['run_id']} ({seen['name']})"
        assert record_from_wandb_run(cloud) == replace(read_record_file(job), source=source)
        if record["status"] == "finished":
            assert summary["test/acc"]["last"] == pytest.approx(record["metrics"]["test/acc"])
            assert "max" in summary["val/acc"]
        else:
            assert "test/acc" not in summary and record["metrics"].get("test/acc") is None


# --------------------------------------------------------------------------- without runs


def _record(name: str, status: str = "finished") -> RunRecord:
    cell = {"dataset": "d", "backbone": "small", "pretrained": False, "image_size": 32,
            "num_transformers": 0, "seed": 0}  # fmt: skip
    data = {"schema_version": 1, "status": status, "run_name": name, "cell": cell,
            "metrics": {}, "finished_at": "2026-12-02T10:00:00+00:00"}  # fmt: skip
    return RunRecord.from_dict(data, source=f"/x/{name}/metrics.json")


@pytest.mark.parametrize(
    ("status", "parts", "expected"),
    [
        ("finished", 1, ["run-CNN-32-s0.offline-run-20261202_100000-a0"]),
        ("failed", 1, ["run-CNN-32-s0 (failed).offline-run-20261202_100000-a0"]),
        ("interrupted", 1, ["run-CNN-32-s0 (interrupted).offline-run-20261202_100000-a0"]),
        ("running", 2, ["run-CNN-32-s0 (unfinished, part 1 of 2).offline-run-20261202_100000-a0",
                        "run-CNN-32-s0 (unfinished, part 2 of 2).offline-run-20261202_110000-a0"]),
    ],
)  # fmt: skip
def test_link_names_mark_runs_that_did_not_finish(status, parts, expected):
    """leet says 'Failed' for an interrupted run and nothing at all for a killed one."""
    folders = tuple(
        Path(f"/w/offline-run-20261202_{h}0000-a0") for h in ("10", "11")[:parts]
    )  # fmt: skip
    run = DashRun("CNN-32-s0", folders, _record("CNN-32-s0", status))
    assert [link_name(run, i) for i in range(parts)] == expected


def test_runs_without_a_record_are_shown_unless_a_filter_is_given(tmp_path):
    bare = tmp_path / "wandb" / "offline-run-20261202_100000-b1"
    bare.mkdir(parents=True)
    (bare / "run-b1.wandb").write_bytes(b"")
    (tmp_path / "wandb" / "latest-run").symlink_to(bare)  # a link: not a second run
    (runs,) = find_runs([str(tmp_path)])
    assert runs.record is None and link_name(runs, 0) == bare.name
    assert select([runs], names=["*"]) == []


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["{tmp}/nowhere"], "{tmp}/nowhere: no such file or directory"),
        (["{tmp}"], "{tmp}: no metrics.json and no W&B run folder under it (expected a sweep, "
         "a run, a logs root or a wandb folder)"),
        (["{tmp}", "--where", "seed"], "--where 'seed': expected KEY=VALUE, e.g. image_size=64"),
        (["--bogus", "{tmp}"], "stn-dash: unrecognized arguments: --bogus"),
    ],
)  # fmt: skip
def test_bad_input_is_one_line_and_exit_status_2(tmp_path, capsys, argv, message):
    assert main([a.format(tmp=tmp_path) for a in argv]) == 2
    assert capsys.readouterr().err == f"error: {message.format(tmp=tmp_path)}\n"


def test_a_folder_not_made_by_stn_dash_is_refused_untouched(tmp_path, capsys):
    bare = tmp_path / "runs" / "wandb" / "offline-run-20261202_100000-b1"
    bare.mkdir(parents=True)
    (bare / "run-b1.wandb").write_bytes(b"")
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep")
    assert main([str(tmp_path / "runs"), "--out", str(mine), "--print"]) == 2
    assert "a folder stn-dash did not make" in capsys.readouterr().err
    assert [p.name for p in mine.iterdir()] == ["notes.txt"]


def test_without_a_terminal_it_asks_for_print(tmp_path, capsys, monkeypatch):
    bare = tmp_path / "wandb" / "offline-run-20261202_100000-b1"
    bare.mkdir(parents=True)
    (bare / "run-b1.wandb").write_bytes(b"")
    monkeypatch.setattr(sys, "stdin", open(os.devnull))  # noqa: SIM115 - closed by pytest
    assert main([str(tmp_path), "--out", str(tmp_path / "dash")]) == 2
    assert "not a terminal" in capsys.readouterr().err
    assert not (tmp_path / "dash").exists()
