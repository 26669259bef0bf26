"""``stn-dash``: a sweep's runs in W&B's local dashboard (``wandb leet``), offline.

    stn-dash logs/demo/multiruns/2026-12-02_10-00-00
    stn-dash logs/demo/multiruns/2026-12-02_10-00-00 --name '2xST-64-*' --name 'CNN-64-*'
    stn-dash logs/ --group demo-2026-12-02_10-00-00 --where model.fixed_scale=0.5 --print

Every job of a sweep keeps its W&B run in its own ``<job>/wandb/`` folder, and ``wandb leet
DIR`` lists the run folders directly inside ``DIR``. This command finds every run record
(``metrics.json``) under the PATHs, selects runs by our run names, groups, tags and cell or
config values, and makes one folder of symbolic links to their W&B run folders (nothing is
copied or moved; the run folders stay as they are), then starts ``wandb leet`` on it.

The folder (``--out``, default ``<paths.log_dir>/dash/<group>``) is made afresh on every
call, keeping leet's own state file. Leet lists entries named ``run-*`` or ``offline-run-*``
and reads the run id from the ``run-<date>_<time>-<id>`` at the end of the name, so the links
are named ``run-<run name>[ (<marks>)].<run folder>``: the list reads as our run names, with
``failed``, ``interrupted`` or ``unfinished`` from the record (W&B says failed for an
interrupted run and may know nothing of a killed one). Reference: ``docs/dashboard.md``.

Exit status 0; 2 for bad input (one ``error: ...`` line, before any folder is touched);
1 when the dashboard cannot be started or fails.
"""

from __future__ import annotations

import argparse
import fnmatch
import hashlib
import os
import re
import shlex
import shutil
import subprocess
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from stnrepro.cli.common import ArgumentParser, UsageError, run_command
from stnrepro.records.reader import load_records
from stnrepro.records.schema import CELL_KEYS, RECORD_FILENAME, RunRecord
from stnrepro.results.model import show

__all__ = ["DashRun", "find_runs", "link_name", "main", "make_folder", "select"]

PROG = "stn-dash"
# A W&B run folder, online or offline: what leet lists and where it takes the run id from.
RUN_FOLDER = re.compile(r"^(?:offline-)?run-\d{8}_\d{6}-(?P<id>[A-Za-z0-9]+)$")
MARKER = ".stn-dash"  # marks a folder as made by stn-dash, so a later call may empty it
# The record's status -> the mark in the runs list; finished runs have none.
STATUS_MARKS = {"failed": "failed", "interrupted": "interrupted", "running": "unfinished"}

EXAMPLES = """\
Each option narrows the selection; repeating one (or a --where key) accepts any of its values.

examples:
  stn-dash logs/demo/multiruns/2026-12-02_10-00-00      # the whole sweep
  stn-dash logs/demo/multiruns/* --name '2xST-64-*'     # one table cell (all its seeds)
  stn-dash logs/ --group demo-2026-12-02_10-00-00 --tag cpu
  stn-dash SWEEP --where model.fixed_scale=0.5          # a --split-by KEY part of a table
  stn-dash SWEEP --where num_transformers=2 --where image_size=64 --print

In the dashboard: up/down (w/s) move in the runs list, space overlays a run's charts on the
others, f filters the list (e.g. name:CNN* tag:cpu; for config values use --where here), o
filters the run's overview (acc: test/acc.last, val/acc.max), h shows all keys, q quits.
"""


@dataclass(frozen=True)
class DashRun:
    """One run to show: its record (None for a bare W&B run folder) and its W&B folders."""

    name: str  # our run name, or the W&B folder's name when there is no record
    folders: tuple[Path, ...]  # its W&B run folders, oldest first (a resumed run has several)
    record: RunRecord | None = None
    group: str | None = None
    tags: tuple[str, ...] = field(default=())

    @property
    def status(self) -> str | None:
        return None if self.record is None else self.record.status


def build_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(
        prog=PROG,
        description="Open runs in W&B's local dashboard (wandb leet), with no account and no "
        "network: every run record under PATH, selected, linked into one folder.",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "paths", nargs="+", metavar="PATH", help="a sweep, a run, or any folder of them"
    )
    parser.add_argument(
        "--name",
        action="append",
        default=[],
        metavar="PATTERN",
        help="runs whose run name matches this shell pattern (e.g. '2xST-64-*': a table cell)",
    )
    parser.add_argument("--group", action="append", default=[], help="runs of this W&B group")
    parser.add_argument("--tag", action="append", default=[], help="runs with this tag")
    parser.add_argument(
        "--where",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="runs whose cell key (image_size, num_transformers, seed, ...) or run-defining "
        "config key (model.fixed_scale, as with stn-table --split-by) has this value",
    )
    parser.add_argument(
        "--out",
        type=Path,
        help="the folder of links (default: <paths.log_dir>/dash/<group>); made afresh",
    )
    parser.add_argument(
        "--print",
        dest="print_only",
        action="store_true",
        help="make the folder, print it and the dashboard command, do not start it",
    )
    return parser


# --------------------------------------------------------------------------- finding runs


def _scan(root: Path) -> tuple[list[Path], bool]:
    """Every W&B run folder under ``root``, and whether there is any run record.

    Links are not followed (so the links of an earlier stn-dash call are not found again).
    """
    found, records = [], False
    for dirpath, dirnames, filenames in os.walk(root):
        records = records or RECORD_FILENAME in filenames
        for name in list(dirnames):
            path = Path(dirpath) / name
            if RUN_FOLDER.match(name):
                dirnames.remove(name)  # nothing of interest inside a run folder
                if not path.is_symlink() and (path / _wandb_file(name)).is_file():
                    found.append(path)
    return sorted(found), records


def _wandb_file(folder_name: str) -> str:
    match = RUN_FOLDER.match(folder_name)
    assert match is not None
    return f"run-{match['id']}.wandb"


def _tags(job: Path) -> tuple[str, ...]:
    """The run's W&B tags (``logger.tags``, else ``tags``) from its saved Hydra config."""
    from omegaconf import DictConfig, OmegaConf  # deferred: only needed once runs are found

    config = job / ".hydra" / "config.yaml"
    if not config.is_file():
        return ()
    try:
        cfg = OmegaConf.load(config)
        if not isinstance(cfg, DictConfig):  # a list, not a Hydra config
            return ()
        try:
            tags = OmegaConf.select(cfg, "logger.tags", default=None)
        except Exception:  # an interpolation only the job could resolve
            tags = None
        if tags is None:
            tags = cfg.get("tags")
        return tuple(str(t) for t in tags or ())
    except Exception:
        return ()


def find_runs(paths: Sequence[str]) -> list[DashRun]:
    """The runs under ``paths``: one per record, plus W&B folders no record claims.

    A record's W&B folders are those in ``<its folder>/wandb/`` (one folder, one run). A
    record without a group (a run killed before its record named it) takes the group of
    the other records in its sweep folder when they agree.
    """
    records: dict[Path, RunRecord] = {}
    folders: set[Path] = set()
    for path in paths:
        if not Path(path).exists():
            raise UsageError(f"{path}: no such file or directory")
        found, has_records = _scan(Path(path))
        if not (found or has_records or Path(path).is_file()):
            raise UsageError(
                f"{path}: no {RECORD_FILENAME} and no W&B run folder under it (expected a "
                "sweep, a run, a logs root or a wandb folder)"
            )
        if has_records or Path(path).is_file():
            for record in load_records(path):
                records.setdefault(Path(record.source).resolve(), record)
        folders.update(f.resolve() for f in found)
    sweep_groups: dict[Path, set[str]] = {}
    for source, record in records.items():
        if group := (record.logger or {}).get("group"):
            sweep_groups.setdefault(source.parent.parent, set()).add(str(group))
    runs, claimed = [], set()
    for source, record in sorted(records.items()):
        job = source.parent
        own = sorted((f for f in folders if f.parent == job / "wandb"), key=lambda f: f.name)
        claimed.update(own)
        group = (record.logger or {}).get("group")
        if group is None and len(siblings := sweep_groups.get(job.parent, set())) == 1:
            (group,) = siblings
        runs.append(
            DashRun(
                name=record.run_name,
                folders=tuple(own),
                record=record,
                group=None if group is None else str(group),
                tags=_tags(job),
            )
        )
    runs += [DashRun(name=f.name, folders=(f,)) for f in sorted(folders - claimed)]
    return runs


# --------------------------------------------------------------------------- selecting


def _where(items: Sequence[str]) -> dict[str, set[str]]:
    wanted: dict[str, set[str]] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise UsageError(f"--where {item!r}: expected KEY=VALUE, e.g. image_size=64")
        wanted.setdefault(key, set()).add(value)
    return wanted


_CELL_KEYS = {key.name for key in CELL_KEYS}


def _value(record: RunRecord, key: str) -> str | None:
    """``key``'s value in ``record`` as written in YAML; None when the run lacks the key."""
    if key in _CELL_KEYS:
        return show(getattr(record.cell, key))
    if record.config is None:
        raise UsageError(
            f"{record.source}: record has no config (written before records kept it), so "
            f"--where {key} cannot place it; use a cell key or --name"
        )
    return show(record.config[key]) if key in record.config else None


def select(
    runs: Sequence[DashRun],
    names: Sequence[str] = (),
    groups: Sequence[str] = (),
    tags: Sequence[str] = (),
    where: Sequence[str] = (),
) -> list[DashRun]:
    """The runs that pass every given filter (a repeated filter accepts any of its values).

    W&B folders without a record have no name, group or cell: any filter leaves them out.
    """
    wanted = _where(where)
    if not (names or groups or tags or wanted):
        return list(runs)
    recorded = [r for r in runs if r.record is not None]
    for key in wanted:
        if all(_value(r.record, key) is None for r in recorded if r.record is not None):
            raise UsageError(f"--where {key}: no run has this cell or config key")

    def keep(run: DashRun) -> bool:
        record = run.record
        assert record is not None
        return (
            (not names or any(fnmatch.fnmatchcase(run.name, n) for n in names))
            and (not groups or run.group in groups)
            and (not tags or any(t in run.tags for t in tags))
            and all(_value(record, key) in values for key, values in wanted.items())
        )

    return [r for r in recorded if keep(r)]


# --------------------------------------------------------------------------- the folder


def link_name(run: DashRun, part: int) -> str:
    """The name leet lists for ``run.folders[part]`` (see the module docstring)."""
    folder = run.folders[part]
    if run.record is None:
        return folder.name
    marks = [STATUS_MARKS[run.status]] if run.status in STATUS_MARKS else []
    if len(run.folders) > 1:
        marks.append(f"part {part + 1} of {len(run.folders)}")
    shown = re.sub(r"[/\x00]", "_", run.name) + (f" ({', '.join(marks)})" if marks else "")
    return f"run-{shown}.{folder.name}"


def default_folder(runs: Sequence[DashRun]) -> Path:
    """``<paths.log_dir>/dash/<the runs' one group>``, or ``.../runs-<hash of the links>``."""
    from omegaconf import OmegaConf

    from stnrepro.config import compose_config  # deferred: imports Hydra

    log_dir = Path(str(OmegaConf.select(compose_config(), "paths.log_dir")))
    groups = {r.group for r in runs}
    if len(groups) == 1 and None not in groups:
        label = str(groups.pop())
    else:
        targets = "\n".join(sorted(str(f) for r in runs for f in r.folders))
        label = "runs-" + hashlib.sha1(targets.encode()).hexdigest()[:8]
    return log_dir / "dash" / re.sub(r"[^A-Za-z0-9_.=+-]+", "_", label)


def make_folder(out: Path, runs: Sequence[DashRun]) -> int:
    """Fill ``out`` afresh with one link per W&B run folder of ``runs``; returns how many."""
    if out.exists() and not out.is_dir():
        raise UsageError(f"--out {out}: not a folder")
    if out.is_dir() and not (out / MARKER).exists() and any(out.iterdir()):
        raise UsageError(
            f"--out {out}: a folder stn-dash did not make (no {MARKER} in it) and not empty; "
            "use another --out"
        )
    out.mkdir(parents=True, exist_ok=True)
    (out / MARKER).write_text(
        "Links made by stn-dash to W&B run folders; the next stn-dash call here replaces them.\n"
    )
    for entry in out.iterdir():
        if entry.is_symlink():
            entry.unlink()
    made = 0
    for run in runs:
        for part, folder in enumerate(run.folders):
            (out / link_name(run, part)).symlink_to(folder, target_is_directory=True)
            made += 1
    return made


# --------------------------------------------------------------------------- the command


def _leet_command(folder: Path) -> list[str]:
    """``wandb leet FOLDER``, with the wandb CLI of this Python's environment if it has one."""
    beside = Path(sys.executable).parent / "wandb"
    on_path = shutil.which("wandb")
    if on_path and (not beside.exists() or Path(on_path).resolve() == beside.resolve()):
        return ["wandb", "leet", str(folder)]
    if beside.exists():
        return [str(beside), "leet", str(folder)]
    raise FileNotFoundError("wandb")


def _counts(runs: Iterable[DashRun]) -> str:
    statuses: dict[str, int] = {}
    for run in runs:
        word = "no record" if run.status is None else STATUS_MARKS.get(run.status, run.status)
        statuses[word] = statuses.get(word, 0) + 1
    return ", ".join(f"{n} {word}" for word, n in sorted(statuses.items()))


def _groups(runs: Sequence[DashRun]) -> str:
    groups = sorted({r.group for r in runs if r.group})
    words = f"group{'s' if len(groups) > 1 else ''} {', '.join(groups)}" if groups else ""
    if ungrouped := sum(r.group is None for r in runs):
        words += f"{' and ' if words else ''}{ungrouped} without a group"
    return words


def dash(args: argparse.Namespace) -> int:
    _where(args.where)  # refused before any folder is read
    runs = select(find_runs(args.paths), args.name, args.group, args.tag, args.where)
    if not runs:
        raise UsageError(f"{', '.join(args.paths)}: no run matches the selection")
    shown = [r for r in runs if r.folders]
    if not shown:
        raise UsageError(
            f"{', '.join(args.paths)}: none of the {len(runs)} selected runs has a W&B run "
            "folder (were they run with logger=csv or logger=none?)"
        )
    if not args.print_only and not (sys.stdin.isatty() and sys.stdout.isatty()):
        raise UsageError(
            "not a terminal: wandb leet needs one (use --print to only make the folder)"
        )
    out = (args.out or default_folder(shown)).absolute()
    links = make_folder(out, shown)
    print(
        f"{PROG}: {len(shown)} runs ({_counts(shown)}) of {_groups(shown)}: {links} W&B run "
        f"folders linked in {out}",
        file=sys.stderr,
    )
    if missing := [r.name for r in runs if not r.folders]:
        print(
            f"{PROG}: not shown, no W&B run folder (logger=csv or none?): {', '.join(missing)}",
            file=sys.stderr,
        )
    try:
        command = _leet_command(out)
    except FileNotFoundError:
        print("error: the wandb command is not installed (pip install wandb)", file=sys.stderr)
        return 1
    if args.print_only:
        print(out)
        print(shlex.join(command))
        return 0
    status = subprocess.run(command).returncode
    if status != 0:
        print(f"error: {shlex.join(command)} exited with status {status}", file=sys.stderr)
        return 1
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``stn-dash``; returns the exit status (0 ok, 2 bad input, 1 dashboard failed)."""
    return run_command(build_parser(), dash, argv)


if __name__ == "__main__":
    sys.exit(main())
