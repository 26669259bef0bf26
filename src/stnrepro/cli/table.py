"""``stn-table``: regenerate the paper's tables from run records: the CUB comparison (Table 3
layout) from bird runs, the distorted-digit errors (Table 1) from digit runs.

    stn-table --runs multirun/2026-11-22/10-00-00
    stn-table --wandb ENTITY/PROJECT --group sweep-x --out results/
    stn-table --runs multirun/... --with-attention
    stn-table --runs multirun/... --split-by model.fixed_scale   # one table per value
    stn-table --runs multirun/... --wandb-log --group sweep-x
    stn-table --runs multirun/... --dataset mnist   # digit runs: the Table 1 layout

Writes ``<name>.md/.csv/.tex/.png`` to ``--out`` and prints the table; with ``--split-by KEY``
one set per value, ``<name>-KEY=VALUE.*``. Which table is made follows from the records (a
digit backbone or a data.distortion makes a digit run; one table never mixes the two). Any
problem with the records is one line on stderr (``error: ...``) and exit status 2, with
nothing written.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Sequence
from typing import Literal

from stnrepro.cli.common import UsageError, command_parser, run_command
from stnrepro.errors import StnreproError
from stnrepro.records.reader import load_records, load_wandb_records
from stnrepro.records.schema import RECORD_FILENAME, RunRecord
from stnrepro.results.agreement import split
from stnrepro.results.dashboard import log_table
from stnrepro.results.digits import build_table
from stnrepro.results.model import TableError
from stnrepro.results.render import default_table_name, print_table, write_table

PROG = "stn-table"


def build_parser() -> argparse.ArgumentParser:
    parser = command_parser(PROG, __doc__)
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument(
        "--runs", metavar="PATH", help=f"directory searched recursively for {RECORD_FILENAME}"
    )
    source.add_argument("--wandb", metavar="ENTITY/PROJECT", help="read runs from W&B")
    parser.add_argument("--group", help="W&B run group (required with --wandb)")
    parser.add_argument("--name", help="output file stem (default: <dataset>_table)")
    parser.add_argument("--out", default="results", help="output directory (default: results)")
    parser.add_argument("--dataset", help="use only runs of this dataset")
    parser.add_argument("--backbone", help="use only runs of this backbone")
    parser.add_argument(
        "--pretrained",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="use only pretrained (or, with --no-pretrained, from-scratch) runs",
    )
    parser.add_argument("--metric", default="test/acc", help="metric key (default: test/acc)")
    parser.add_argument(
        "--with-attention",
        action="store_true",
        help="also tabulate where the transformers look (IoU with the bird box, centre/head/"
        "body hit rates per transformer; keys <stage>/st{i}/..., stage from --metric)",
    )
    parser.add_argument(
        "--split-by",
        metavar="KEY",
        action="append",
        default=[],
        help="one table per value of this run-defining config key (e.g. model.fixed_scale), "
        "written as <name>-KEY=VALUE.*; repeatable. Runs in one cell must otherwise differ "
        "only in their seed",
    )
    parser.add_argument(
        "--wandb-log",
        action="store_true",
        help="also log the result to W&B as a run with job_type=table in --group (default: "
        "the runs' group): the table and claims as tables, the plot, and the files as an "
        "artifact; project from --wandb or the runs' records; offline without credentials",
    )
    return parser


def _default_project() -> str:
    """--wandb-log's project when the runs name none: the logger config's default."""
    from stnrepro.config import compose_config  # deferred: imports Hydra

    return str(compose_config(["logger=wandb"]).logger.project)


def _wandb_target(
    args: argparse.Namespace, records: Sequence[RunRecord]
) -> tuple[str | None, str, str | None]:
    """(entity, project, group) for --wandb-log: from the flags, else from the runs' records."""
    loggers = [r.logger or {} for r in records]
    if args.wandb:
        entity, project = args.wandb.split("/")
    else:
        entity = None
        projects = sorted({str(p) for lg in loggers if (p := lg.get("project"))})
        project = projects[0] if len(projects) == 1 else _default_project()
    groups = sorted({str(g) for lg in loggers if (g := lg.get("group"))})
    group = args.group or (groups[0] if len(groups) == 1 else None)
    return entity, project, group


def _wandb_mode() -> Literal["online", "offline"]:
    from stnrepro.run.tracking import wandb_credentials_present  # deferred: imports Lightning

    if os.environ.get("WANDB_MODE") == "offline" or not wandb_credentials_present():
        return "offline"
    return "online"


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``stn-table``; returns the exit status (0 ok, 2 bad input: nothing written)."""
    return run_command(build_parser(), tabulate_runs, argv)


def tabulate_runs(args: argparse.Namespace) -> int:
    """Read the records, build every table (so all are checked), then write and print them."""
    if args.wandb and not args.group:
        raise UsageError(f"{PROG}: --wandb needs --group")
    if args.runs is not None:
        records = load_records(args.runs)
    else:
        records = load_wandb_records(args.wandb, args.group)
    tables = []
    for suffix, part in split(records, args.split_by):
        try:
            table = build_table(
                part,
                metric=args.metric,
                dataset=args.dataset,
                backbone=args.backbone,
                pretrained=args.pretrained,
                attention=args.with_attention,
            )
        except StnreproError as exc:
            raise TableError(f"{suffix.lstrip('-')}: {exc}" if suffix else str(exc)) from None
        tables.append(((args.name or default_table_name(table)) + suffix, table))
    # All tables are built (and so checked) before the first file is written.
    paths = [write_table(table, args.out, name) for name, table in tables]
    for (name, table), written in zip(tables, paths, strict=True):
        if len(tables) > 1:
            print(f"== {name}")
        print_table(table)
        for path in written:
            print(f"wrote {path}")
    if args.wandb_log:
        entity, project, group = _wandb_target(args, records)
        mode = _wandb_mode()
        for (name, table), written in zip(tables, paths, strict=True):
            run_dir = log_table(
                table, written, name=name, project=project, entity=entity, group=group,
                mode=mode, save_dir=args.out,
            )  # fmt: skip
            print(f"logged {name} to W&B ({mode}, project {project}, group {group}): {run_dir}")
    return 0
