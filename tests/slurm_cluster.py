"""A one-node SLURM cluster for tests, on this machine, started and stopped by PID.

Import from any test module in ``tests/`` (pytest puts this folder on ``sys.path``)::

    from slurm_cluster import SlurmCluster, SlurmUnavailable

    cluster = SlurmCluster.start(tmp_path / "slurm")   # raises SlurmUnavailable(reason)
    cluster.run(["sinfo"])                             # SLURM_CONF points at its config
    cluster.stop()

Why a real cluster: the SLURM path (Hydra's submitit launcher, requeue on a time limit or a
preemption, DDP across SLURM tasks) has failures a mock cannot show: signals reach every
process of the step (DataLoader workers too), a job too big for the partition pends forever.

What it needs: root and Debian's ``slurm-wlm`` and ``munge`` (``apt-get install slurm-wlm
munge``); without them :meth:`SlurmCluster.start` raises :class:`SlurmUnavailable` saying
which is missing, and the tests skip with that reason. No systemd: ``munged``, ``slurmctld``
and ``slurmd`` run in the foreground of processes this module starts (each in its own
session), with every file (config, key, socket, spool, state, logs) under one folder and
free TCP ports, so the cluster touches nothing of the machine's own SLURM or munge set-up.
:meth:`SlurmCluster.stop` cancels the cluster's jobs and ends exactly those processes.

What mattered in ``slurm.conf`` (Slurm 22.05): the node line exactly as ``slurmd -C`` prints
it (CPUs, sockets, cores, RealMemory), ``ProctrackType=proctrack/linuxproc``,
``TaskPlugin=task/none``, ``SelectType=select/cons_tres`` with ``CR_Core``, accounting and
job completion off, ``SlurmUser=root``. Without accounting submitit logs a harmless
"Bypassing sacct error". A requeued job is held about 2 minutes (``BeginTime``);
:meth:`SlurmCluster.release` starts it now.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

PACKAGES = "slurm-wlm munge"
DAEMONS = ("munged", "slurmctld", "slurmd")
CLIENTS = ("sbatch", "srun", "squeue", "scontrol", "scancel", "sinfo")
MUNGE_KEY = Path("/etc/munge/munge.key")
START_TIMEOUT_S = 30.0


class SlurmUnavailable(RuntimeError):
    """SLURM cannot be started here; the message says why (for ``pytest.skip``)."""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _missing() -> list[str]:
    return [name for name in (*DAEMONS, *CLIENTS) if shutil.which(name) is None]


def availability() -> str | None:
    """None when a cluster can be started here, else why not (one line)."""
    if os.name != "posix" or os.geteuid() != 0:
        return "SLURM test cluster needs root (its daemons run as SlurmUser=root)"
    missing = _missing()
    if missing:
        return (
            f"SLURM test cluster: {', '.join(missing)} not installed "
            f"(apt-get install -y {PACKAGES})"
        )
    return None


def node_line() -> str:
    """This machine's ``NodeName=...`` line as ``slurmd -C`` prints it (its first line)."""
    done = subprocess.run(["slurmd", "-C"], capture_output=True, text=True, timeout=30)
    line = next((ln for ln in done.stdout.splitlines() if ln.startswith("NodeName=")), None)
    if done.returncode != 0 or line is None:
        raise SlurmUnavailable(f"slurmd -C printed no node line: {done.stderr.strip()[:300]}")
    return line.strip()


@dataclass
class SlurmCluster:
    """A running one-node cluster; ``env`` is the environment its clients need."""

    root: Path
    env: dict[str, str]
    cpus: int
    procs: dict[str, subprocess.Popen] = field(default_factory=dict)

    # -- start and stop ---------------------------------------------------------------------

    @classmethod
    def start(cls, root: Path, partition: str = "debug") -> SlurmCluster:
        reason = availability()
        if reason:
            raise SlurmUnavailable(reason)
        root.mkdir(parents=True, exist_ok=True)
        for sub in ("munge", "spool", "state", "log"):
            (root / sub).mkdir(exist_ok=True)
        node = node_line()
        cpus = int(re.search(r"\bCPUs=(\d+)", node).group(1))  # type: ignore[union-attr]
        socket_path = root / "munge" / "munge.socket"
        key = root / "munge" / "munge.key"
        if MUNGE_KEY.is_file():
            shutil.copyfile(MUNGE_KEY, key)
        else:
            key.write_bytes(os.urandom(1024))
        key.chmod(0o400)
        conf = root / "slurm.conf"
        conf.write_text(
            "\n".join(
                [
                    "ClusterName=stnrepro-test",
                    f"SlurmctldHost={socket.gethostname()}(127.0.0.1)",
                    f"SlurmctldPort={_free_port()}",
                    f"SlurmdPort={_free_port()}",
                    "SlurmUser=root",
                    "SlurmdUser=root",
                    "AuthType=auth/munge",
                    "CredType=cred/munge",
                    f"AuthInfo=socket={socket_path}",
                    "ProctrackType=proctrack/linuxproc",
                    "TaskPlugin=task/none",
                    "MpiDefault=none",
                    "SelectType=select/cons_tres",
                    "SelectTypeParameters=CR_Core",
                    "SchedulerType=sched/builtin",
                    "AccountingStorageType=accounting_storage/none",
                    "JobAcctGatherType=jobacct_gather/none",
                    "JobCompType=jobcomp/none",
                    "ReturnToService=2",
                    "KillWait=10",
                    "MinJobAge=600",
                    f"StateSaveLocation={root / 'state'}",
                    f"SlurmdSpoolDir={root / 'spool'}",
                    f"SlurmctldPidFile={root / 'slurmctld.pid'}",
                    f"SlurmdPidFile={root / 'slurmd.pid'}",
                    f"SlurmctldLogFile={root / 'log' / 'slurmctld.log'}",
                    f"SlurmdLogFile={root / 'log' / 'slurmd.log'}",
                    "SlurmctldDebug=info",
                    "SlurmdDebug=info",
                    f"{node} State=UNKNOWN",
                    f"PartitionName={partition} Nodes=ALL Default=YES MaxTime=INFINITE State=UP",
                    "",
                ]
            )
        )
        env = os.environ | {"SLURM_CONF": str(conf)}
        cluster = cls(root=root, env=env, cpus=cpus)
        try:
            cluster._spawn(
                "munged",
                ["munged", "-F", "--force", f"--socket={socket_path}", f"--key-file={key}",
                 f"--log-file={root / 'log' / 'munged.log'}", f"--pid-file={root / 'munged.pid'}",
                 f"--seed-file={root / 'munge' / 'seed'}"],
            )  # fmt: skip
            cluster._wait(lambda: socket_path.exists(), "munged socket")
            cluster._spawn("slurmctld", ["slurmctld", "-D", "-i"])
            cluster._spawn("slurmd", ["slurmd", "-D"])
            cluster._wait(cluster._node_idle, "node idle in sinfo")
        except BaseException:
            cluster.stop()
            raise
        return cluster

    def _spawn(self, name: str, args: list[str]) -> None:
        log = open(self.root / "log" / f"{name}.out", "ab")  # noqa: SIM115 - kept by the child
        self.procs[name] = subprocess.Popen(
            args, stdout=log, stderr=subprocess.STDOUT, env=self.env, start_new_session=True
        )
        log.close()

    def _wait(self, ready, what: str) -> None:
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            for name, proc in self.procs.items():
                if proc.poll() is not None:
                    raise SlurmUnavailable(
                        f"{name} exited with status {proc.returncode} while waiting for {what}: "
                        + self.log_tail(name)
                    )
            if ready():
                return
            time.sleep(0.2)
        raise SlurmUnavailable(
            f"no {what} after {START_TIMEOUT_S:.0f} s: {self.log_tail('slurmd')}"
        )

    def _node_idle(self) -> bool:
        done = self.run(["sinfo", "-h", "-o", "%t"], check=False)
        return done.returncode == 0 and done.stdout.strip().startswith("idle")

    def log_tail(self, name: str, chars: int = 600) -> str:
        texts = []
        for path in (self.root / "log" / f"{name}.out", self.root / "log" / f"{name}.log"):
            if path.is_file():
                texts.append(path.read_text(errors="replace")[-chars:])
        return " | ".join(t.strip().replace("\n", " / ") for t in texts) or "(no log)"

    def stop(self) -> None:
        """Cancel the cluster's jobs, then end the daemons this object started, by PID."""
        if "slurmctld" in self.procs and self.procs["slurmctld"].poll() is None:
            self.run(["scancel", "--full", "--user=root"], check=False)
            deadline = time.monotonic() + 20
            while time.monotonic() < deadline and self.jobs():
                time.sleep(0.5)
        for name in reversed(list(self.procs)):
            proc = self.procs[name]
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(timeout=15)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(timeout=15)
        self.procs.clear()

    # -- clients ----------------------------------------------------------------------------

    def run(self, args: list[str], check: bool = True) -> subprocess.CompletedProcess:
        done = subprocess.run(args, capture_output=True, text=True, env=self.env, timeout=60)
        if check and done.returncode != 0:
            raise RuntimeError(f"{' '.join(args)}: {done.stderr.strip()}")
        return done

    def jobs(self) -> list[dict[str, str]]:
        """The cluster's pending and running jobs: id, name, state, reason."""
        done = self.run(["squeue", "-h", "-o", "%i|%j|%T|%r"], check=False)
        rows = [line.split("|") for line in done.stdout.splitlines() if line.strip()]
        return [dict(zip(("id", "name", "state", "reason"), row, strict=False)) for row in rows]

    def job(self, job_id: str) -> dict[str, str]:
        """``scontrol show job`` as a dict (JobState, Reason, Restarts, BeginTime, ...)."""
        done = self.run(["scontrol", "-o", "show", "job", job_id], check=False)
        return dict(re.findall(r"(\w+)=(\S*)", done.stdout))

    def release(self, job_id: str, restarts: int = 1, timeout_s: float = 120.0) -> None:
        """Start a requeued job now instead of after SLURM's hold of about 2 minutes.

        Waits until the job is back in the queue (``PENDING``, ``restarts`` counted): a job
        being requeued counts the restart while still ``COMPLETING``, and SLURM sets the
        hold when the requeue completes, after a release sent too early.
        """
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            job = self.job(job_id)
            if job.get("JobState") == "PENDING" and int(job.get("Restarts") or 0) >= restarts:
                break
            time.sleep(0.2)
        else:
            raise AssertionError(f"job {job_id} not requeued after {timeout_s:.0f} s: {job}")
        self.run(["scontrol", "update", f"JobId={job_id}", "StartTime=now"])
