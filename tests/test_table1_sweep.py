"""Table 1 end to end through the real CLI: a digit sweep on Debian's Fashion-MNIST (a few
hundred images, one epoch), its records and W&B offline runs, and the digit table from them;
then an exact resume of a digit run (distortions drawn per (seed, epoch, image))."""

from __future__ import annotations

import json
import signal
import time
from pathlib import Path

import pytest
from test_resume import start
from test_sweep import run_cli

from stnrepro.cli.table import main as table_main
from stnrepro.data.digits import DEBIAN_FASHION_MNIST

pytestmark = pytest.mark.slow


@pytest.fixture(autouse=True)
def _needs_debian_fashion_mnist():
    if not Path(DEBIAN_FASHION_MNIST).is_dir():
        pytest.skip(f"{DEBIAN_FASHION_MNIST} absent (apt-get install dataset-fashion-mnist)")


TINY = [
    "data=fashion_mnist", "data.train_limit=600", "data.test_limit=300", "data.batch_size=64",
    "debug=tiny",
]  # fmt: skip


def test_digit_sweep_gives_records_wandb_runs_and_the_table1_layout(tmp_path):
    sweep = tmp_path / "sweep"
    run_cli(
        [*TINY, "data/distortion=R,RTS", "model=digits/cnn,digits/st_cnn_tps", "logger=wandb",
         f"hydra.sweep.dir={sweep}"],
        tmp_path,
    )  # fmt: skip
    records = [json.loads(p.read_text()) for p in sorted(sweep.glob("*/metrics.json"))]
    assert len(records) == 4 and {r["status"] for r in records} == {"finished"}
    names = {r["run_name"] for r in records}
    assert names == {"CNN-R-s0", "CNN-RTS-s0", "ST-CNN-TPS-R-s0", "ST-CNN-TPS-RTS-s0"}
    assert {r["cell"]["image_size"] for r in records} == {28, 42}
    assert len(list(sweep.glob("*/wandb/offline-run-*"))) == 4
    # the test images are the same distorted images for both models of a distortion
    for d in ("R", "RTS"):
        ids = [
            (p.parent / "predictions.csv").read_text().splitlines()[1:4]
            for p in sweep.glob("*/metrics.json")
            if json.loads(p.read_text())["cell"].get("distortion") == d
        ]
        assert len(ids) == 2 and [r.split(",")[0] for r in ids[0]] == [
            r.split(",")[0] for r in ids[1]
        ]
    out = tmp_path / "results"
    assert table_main(["--runs", str(sweep), "--name", "t1", "--out", str(out)]) == 0
    md = (out / "t1.md").read_text()
    assert "ST-CNN TPS" in md and "RTS" in md and "no paper numbers" in md
    claims = (out / "t1_claims.csv").read_text()
    assert "ST-CNN TPS" in claims and "lower is better" in claims


def test_killed_digit_run_resumes_to_the_same_result(tmp_path):
    def args(run_dir: Path) -> list[str]:
        return [*TINY, "data/distortion=RTS", "model=digits/st_cnn_aff", "logger=csv",
                "trainer.max_epochs=3", f"hydra.run.dir={run_dir}"]  # fmt: skip

    reference, killed = tmp_path / "reference", tmp_path / "killed"
    assert start(args(reference)).wait(timeout=600) == 0
    proc = start(args(killed))
    last = killed / "checkpoints" / "last.ckpt"
    deadline = time.monotonic() + 600
    while not last.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=60)
    assert json.loads((killed / "metrics.json").read_text())["status"] == "running"
    again = start(args(killed))
    assert again.wait(timeout=600) == 0, again.stderr.read()[-2000:]
    assert "resuming from" in again.stderr.read() + (killed / "train.log").read_text()
    for name in ("csv/metrics.csv", "predictions.csv"):
        assert (killed / name).read_bytes() == (reference / name).read_bytes(), name
