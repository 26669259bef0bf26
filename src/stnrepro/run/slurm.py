"""How SLURM ended an attempt of a run, in words the run's record can keep.

Under SLURM an attempt ends from outside in ways a record must tell apart, because some of
them continue the run in a new attempt of the same job (same folder, ``last.ckpt``):

- **The time-limit warning.** submitit's sbatch asks ``--signal=USR2@<signal_delay_s>``
  (``SUBMITIT_PREEMPT_SIGNAL`` names another signal). submitit's handler, in the job's main
  process, checkpoints the sweep job, requeues it with ``scontrol requeue`` and exits with
  ``sys.exit(-1)``; once the job has used its ``max_num_timeout`` time-limit requeues it
  raises ``UncompletedJobError`` instead and the run fails. submitit calls a warning that
  comes well before the limit (before 80 % of ``timeout_min``, or more than 10 minutes
  before it) a preemption: that one does not count against ``max_num_timeout``.
- **SIGTERM.** SLURM requeueing the job (``scontrol requeue``, a preemption with
  ``PreemptMode=REQUEUE``), ``scancel``, or the time limit itself; Lightning notes it
  (``trainer.received_sigterm``) and stops at the next batch. Which one it was, SLURM says
  while the job is still ``COMPLETING``: after a requeue ``scontrol show job`` already
  counts one more restart than the job's ``SLURM_RESTART_COUNT``; at the time limit its
  reason is ``TimeLimit``; a ``scancel`` leaves no trace there (so: "not requeued").

Without these, submitit's exit looked like Lightning's Ctrl-C exit and the record said
"interrupted by Ctrl-C". :class:`JobSignals` wraps submitit's handler (it runs it unchanged)
to note what happened; :meth:`JobSignals.ending` turns that into the record's reason.

submitit's handler ends the attempt wherever the warning finds it, and one place loses
data: Lightning saves ``last.ckpt`` in ``on_train_epoch_end`` but logs the epoch's training
metrics after that hook, so a warning in between left a checkpoint of the finished epoch
and no log row for it, and the resumed run's ``metrics.csv`` lacked that row for good.
:meth:`JobSignals.callback` holds a warning from the epoch's end until the next epoch (or
the end of training) starts, which is after those metrics are logged.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytorch_lightning as pl

from stnrepro.errors import one_line

__all__ = ["Ending", "JobSignals", "PendingWatch", "job_id"]

#: Where a requeued run continues; said in every reason of a requeued attempt.
RESUMES = "the run resumes from checkpoints/last.ckpt when SLURM starts the job again"
SCONTROL_TIMEOUT_S = 5.0


def job_id() -> str | None:
    """This process's SLURM job as ``squeue`` names it (``12``, ``12_3`` for an array task),
    None outside SLURM."""
    array, task = os.environ.get("SLURM_ARRAY_JOB_ID"), os.environ.get("SLURM_ARRAY_TASK_ID")
    if array and task:
        return f"{array}_{task}"
    return os.environ.get("SLURM_JOB_ID") or None


def _warning_signal() -> signal.Signals:
    name = os.environ.get("SUBMITIT_PREEMPT_SIGNAL", "USR2")
    return getattr(signal, f"SIG{name}", signal.SIGUSR2)


@dataclass(frozen=True)
class Ending:
    """How an attempt was ended from outside: the record's ``status`` and ``reason``, and
    the process's exit status (an interruption; a failure keeps its exception).

    After submitit has requeued the job the process must end with its ``SystemExit``, even
    when another error surfaced meanwhile (SLURM's SIGTERM to the old attempt kills the
    DataLoader workers while Lightning shuts them down): any other exception would make
    submitit record the job as done, and the sweep would stop waiting for the requeued job.
    """

    status: str  # "interrupted" (the run can continue) or "failed"
    reason: str
    exit_status: Any = None


class JobSignals:
    """Notes SLURM's signals to this attempt's main process (a context manager).

    Outside a SLURM job, or when nobody handles the warning signal, it does nothing. The
    wrapper runs submitit's handler as it is and only records what it did: requeued (its
    ``SystemExit``) or refused (its exception, kept as ``refusal``).
    """

    def __init__(self) -> None:
        self.job = job_id()
        self.signal = _warning_signal()
        self.case: str | None = None  # "time limit" or "preemption", as submitit judged
        self.requeued: bool | None = None
        self.refusal: str | None = None
        self.exit_code: Any = None  # submitit's sys.exit() code after requeueing
        self._wrapped: Any = None
        self._holding = False
        self._held: tuple[int, Any] | None = None

    def __enter__(self) -> JobSignals:
        if self.job is None or threading.current_thread() is not threading.main_thread():
            return self
        handler = signal.getsignal(self.signal)
        if callable(handler):
            self._wrapped = handler
            signal.signal(self.signal, self._on_warning)
        return self

    def __exit__(self, *exc: object) -> None:
        if self._wrapped is not None and signal.getsignal(self.signal) == self._on_warning:
            signal.signal(self.signal, self._wrapped)

    def callback(self) -> pl.Callback:
        """The Lightning callback that holds a warning over the end of each epoch."""
        return _HoldOverEpochEnd(self)

    def hold(self) -> None:
        """From now on a warning waits for :meth:`release` (no-op outside SLURM)."""
        self._holding = True

    def release(self) -> None:
        """Stop holding; a warning that came meanwhile is handled now (and may end the
        attempt here, with submitit's ``SystemExit``)."""
        self._holding = False
        held, self._held = self._held, None
        if held is not None:
            self._handle(*held)

    def _on_warning(self, signum: int, frame: Any) -> None:
        if self._holding:
            self._held = (signum, frame)
            return
        self._handle(signum, frame)

    def _handle(self, signum: int, frame: Any) -> None:
        owner = getattr(self._wrapped, "__self__", None)
        timed_out = getattr(owner, "has_timed_out", None)  # submitit's SignalHandler
        if callable(timed_out):
            self.case = "time limit" if timed_out() else "preemption"
        else:
            self.case = "time limit or preemption"
        try:
            self._wrapped(signum, frame)
        except SystemExit as exc:
            self.requeued = True
            self.exit_code = exc.code
            raise
        except Exception as exc:
            self.requeued = False
            self.refusal = one_line(exc)
            raise

    def ending(self, received_sigterm: bool) -> Ending | None:
        """How SLURM ended this attempt, or None when it did not (or this is not SLURM)."""
        if self.job is None:
            return None
        name = self.signal.name
        if self.case is not None and self.requeued:
            return Ending(
                "interrupted",
                f"SLURM {self.case} ({name} warning): checkpointed and "
                f"requeued by submitit as job {self.job}; {RESUMES}",
                self.exit_code,
            )
        if self.case is not None and self.requeued is False:
            return Ending(
                "failed",
                f"SLURM {self.case} ({name} warning): not requeued: "
                f"{self.refusal} (hydra.launcher.max_num_timeout is how many time-limit "
                "requeues a job gets)",
            )
        if received_sigterm:
            return Ending("interrupted", sigterm_cause(self.job), 143)
        return None


class _HoldOverEpochEnd(pl.Callback):
    """Holds the warning from ``on_train_epoch_end`` (this callback is not a checkpoint, so
    Lightning calls it before the checkpoints save) until the next ``on_train_epoch_start``
    or ``on_train_end``, by when the finished epoch's metrics are logged."""

    def __init__(self, signals: JobSignals) -> None:
        self.signals = signals

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.signals.hold()

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.signals.release()

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.signals.release()


def _scontrol_job(job: str) -> dict[str, str]:
    try:
        done = subprocess.run(
            ["scontrol", "-o", "show", "job", job],
            capture_output=True,
            text=True,
            timeout=SCONTROL_TIMEOUT_S,
        )
    except (OSError, subprocess.SubprocessError):
        return {}
    return dict(re.findall(r"(\w+)=(\S*)", done.stdout)) if done.returncode == 0 else {}


def _seconds(text: str | None) -> int | None:
    """A SLURM duration (``[days-]hours:minutes:seconds``, ``minutes:seconds``) in seconds;
    None for ``UNLIMITED`` and anything else."""
    match = re.fullmatch(r"(?:(\d+)-)?(?:(\d+):)?(\d+):(\d+)", text or "")
    if match is None:
        return None
    days, hours, minutes, seconds = (int(g or 0) for g in match.groups())
    return ((days * 24 + hours) * 60 + minutes) * 60 + seconds


def sigterm_cause(job: str) -> str:
    """Why SLURM sent SIGTERM to ``job``, as ``scontrol show job`` tells it now."""
    state = _scontrol_job(job)
    if not state:
        return (
            f"SIGTERM from SLURM to job {job} (scontrol show job could not say why: a "
            "preemption, scancel or the time limit); resume with the same command"
        )
    restarts = int(os.environ.get("SLURM_RESTART_COUNT") or 0)
    if state.get("Restarts", "").isdigit() and int(state["Restarts"]) > restarts:
        return (
            f"SLURM preemption (SIGTERM): job {job} requeued (a preemption or scontrol "
            f"requeue); {RESUMES}"
        )
    limit, ran = _seconds(state.get("TimeLimit")), _seconds(state.get("RunTime"))
    if state.get("Reason") == "TimeLimit" or (
        limit is not None and ran is not None and ran >= limit
    ):
        return (
            f"SLURM time limit of job {job} reached ({state['TimeLimit']}, SIGTERM) without a "
            "requeue; resume with the same command"
        )
    return (
        f"SIGTERM from SLURM to job {job}, not requeued (scancel, or the node going down); "
        "resume with the same command"
    )


# --------------------------------------------------------------------------- pending jobs

#: squeue reasons of a pending job that no waiting will end: the request exceeds what the
#: partition's nodes or limits offer. (Resources, Priority, BeginTime, ... are waits.)
NEVER_RUNS = frozenset(
    {"PartitionConfig", "PartitionNodeLimit", "PartitionTimeLimit", "BadConstraints"}
)
#: The launcher keys that size a job's request, as the one-line message names them.
SIZE_KEYS = ("nodes", "tasks_per_node", "cpus_per_task", "gpus_per_node", "mem_gb", "timeout_min")
POLL_S = 5.0


def _jobs_in(submitit_dir: Path) -> list[str]:
    """The job ids submitit made folders for (``12``, ``12_0`` for an array task)."""
    if not submitit_dir.is_dir():
        return []
    return sorted(p.name for p in submitit_dir.iterdir() if re.fullmatch(r"\d+(_\d+)?", p.name))


def _squeue(jobs: list[str]) -> list[tuple[str, str, str]]:
    """``(job, state, reason)`` of those of ``jobs`` SLURM still knows (arrays expanded)."""
    base = sorted({j.split("_")[0] for j in jobs})
    try:
        done = subprocess.run(
            ["squeue", "-h", "-r", "-o", "%i|%T|%r", "-j", ",".join(base)],
            capture_output=True,
            text=True,
            timeout=SCONTROL_TIMEOUT_S,
        )
    except (OSError, subprocess.SubprocessError):
        return []
    rows = [line.split("|") for line in done.stdout.splitlines()]
    return [(r[0], r[1], r[2]) for r in rows if len(r) == 3]


def _partition(name: str | None) -> str:
    """What the partition's nodes offer, as ``sinfo`` says (one short phrase)."""
    args = ["sinfo", "-h", "-o", "%P %c %m %G %l"] + (["-p", name] if name else [])
    try:
        done = subprocess.run(args, capture_output=True, text=True, timeout=SCONTROL_TIMEOUT_S)
    except (OSError, subprocess.SubprocessError):
        return "sinfo gave nothing"
    rows = [line.split() for line in done.stdout.splitlines() if line.strip()]
    if not rows or len(rows[0]) < 5:
        return "sinfo gave nothing"
    part, cpus, mem, gres, limit = rows[0][:5]
    return (
        f"partition {part.rstrip('*')} has nodes of {cpus} CPUs, {mem} MB, gres {gres}, "
        f"time limit {limit}"
    )


def unrunnable_line(job: str, reason: str, launcher: Mapping[str, Any]) -> str:
    """The one line for a job SLURM will never start as asked (and cancels here)."""
    asked = ", ".join(f"{k}={launcher.get(k)}" for k in SIZE_KEYS if k in launcher)
    offered = _partition(launcher.get("partition"))
    return (
        f"sweep: SLURM keeps job {job} PENDING ({reason}): {offered}; "
        f"the job asks {asked}: size hydra.launcher.{'/'.join(SIZE_KEYS)} to fit "
        f"(sinfo -o '%P %c %m %G %l'); job {job} cancelled"
    )


def _record_failure(folder: str, job: str, tasks: int, what: str) -> None:
    """Write, for submitit, the outcome the cancelled job can never write itself: for each
    of its tasks (submitit's own ``<job>_<task>_result.pkl``) a failed Hydra job whose
    error is ``what`` in one line.

    The sweep's launcher waits in submitit's ``result()`` for that file or for ``sacct``
    (absent where SLURM keeps no accounting) to say the job ended; with it the launcher
    returns, and Hydra ends the sweep printing ``what`` alone (a compact Hydra error), not
    a traceback of submitit's.
    """
    from hydra.core.utils import JobReturn, JobStatus
    from hydra.errors import CompactHydraException
    from submitit.core.utils import (
        DelayedSubmission,
        JobPaths,
        cloudpickle_dump,
        temporary_save_path,
    )

    for task in range(tasks):
        paths = JobPaths(folder, job_id=job, task_id=task)
        try:  # the job's own overrides, which Hydra names in its error
            overrides = list(DelayedSubmission.load(paths.submitted_pickle).args[0])
        except Exception:
            overrides = None
        returned = JobReturn(overrides=overrides, status=JobStatus.FAILED)
        returned.return_value = CompactHydraException(what)
        paths.folder.mkdir(parents=True, exist_ok=True)
        with temporary_save_path(paths.result_pickle) as tmp:
            cloudpickle_dump(("success", returned), tmp)


class PendingWatch:
    """While a SLURM sweep waits for its jobs: a job pending for a reason that no waiting
    ends (:data:`NEVER_RUNS`) is reported in one line and cancelled, and its outcome written
    for submitit, so the sweep ends instead of waiting forever in submitit's ``result()``.

    A daemon thread polls ``squeue`` every :data:`POLL_S` seconds for the jobs submitit made
    folders for under ``launcher["submitit_folder"]`` (``<sweep>/.submitit/%j``);
    :meth:`stop` ends it.
    """

    def __init__(self, launcher: Mapping[str, Any], out: Any) -> None:
        self.folder = str(launcher["submitit_folder"])
        self.submitit_dir = Path(self.folder).parent
        self.tasks = int(launcher.get("nodes") or 1) * int(launcher.get("tasks_per_node") or 1)
        self.launcher = launcher
        self.out = out
        self.reported: set[str] = set()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="slurm-pending", daemon=True)

    def start(self) -> PendingWatch:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()

    def check(self) -> list[str]:
        """One poll: report and cancel the jobs that will never run; return their lines."""
        jobs = _jobs_in(self.submitit_dir)
        lines = []
        for job, state, reason in _squeue(jobs) if jobs else []:
            if state != "PENDING" or reason not in NEVER_RUNS or job in self.reported:
                continue
            self.reported.add(job)
            line = unrunnable_line(job, reason, self.launcher)
            print(line, file=self.out, flush=True)
            lines.append(line)
            subprocess.run(["scancel", job], capture_output=True, timeout=SCONTROL_TIMEOUT_S)
            _record_failure(
                self.folder,
                job,
                self.tasks,
                f"sweep: SLURM job {job} cancelled: PENDING ({reason}), it would never start",
            )
        return lines

    def _run(self) -> None:
        while not self._stop.wait(POLL_S):
            try:
                self.check()
            except (OSError, subprocess.SubprocessError):
                continue  # SLURM's clients are slow or gone: submitit will say so
