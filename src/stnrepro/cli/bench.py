"""``stn-bench``: training throughput of the CNN / ST-CNN cells against a naive reference.

    # the GPU run that produces results/benchmark.md (about 8 minutes on one H100):
    stn-bench --quick --out results/benchmark.md
    # if the time budget left cells skipped: measure those (whole cells) in a second run
    stn-bench --quick --resume --out results/benchmark.md
    # the CPU check that CI runs (seconds; correctness, not speed):
    stn-bench --tiny --device cpu --out /tmp/b.md
    # Table 1's cells on the CPU against the tutorial's loop (results/benchmark_cpu.md):
    stn-bench --table1

Per backbone (inception_v3, resnet50) and cell (CNN 224, 2xST 224, 2xST 448, 4xST 448),
model-only and end-to-end img/s of the naive reference and the best lever set, each
composed from the packaged configs (:mod:`stnrepro.bench.cells` lists the lever tokens and
their config overrides), a lever ablation on inception_v3 CNN 224 and 4xST 448, and the crop
samplers alone. ``--quick``: 3 warm-up steps, 3 windows of 5 steps and a 420 s budget after
which the remaining measurements are reported as skipped; the report and JSON are rewritten
after every measurement. ``--resume`` keeps the complete cells of the existing JSON and
re-measures the others whole, so every ratio compares figures of one run.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import sys
import time
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import torch

from stnrepro.bench.cells import BACKBONES, CELLS, NAIVE, parse_lever
from stnrepro.bench.digits import DISTORTIONS as DIGIT_DISTORTIONS
from stnrepro.bench.digits import LADDER as DIGIT_LADDER
from stnrepro.bench.digits import MODELS as DIGIT_MODELS
from stnrepro.bench.digits import DigitSettings
from stnrepro.bench.digits import run as run_digits
from stnrepro.bench.run import Benchmark, Settings, global_state_kept
from stnrepro.cli.common import UsageError, command_parser, run_command

DEFAULT_BEST = "bench+bf16+cl+fused+analytic+compile"
#: The lever ablation, cumulative so that "x previous" is what each lever adds.
LADDER = (
    "naive",
    "bench",
    "bench+bf16",
    "bench+bf16+cl",
    "bench+bf16+cl+fused",
    "bench+bf16+cl+fused+analytic",
    "bench+bf16+cl+fused+roi_align",
    "bench+bf16+cl+fused+analytic+compile",
    "bench+bf16+cl+fused+analytic+compile+b128",
    "bench+bf16+cl+fused+analytic+cudagraphs",
)
QUICK_LADDER = (
    "naive",
    "bench+bf16",
    "bench+bf16+cl",
    "bench+bf16+cl+fused+analytic",
    "bench+bf16+cl+fused+analytic+compile",
    "bench+bf16+cl+fused+analytic+compile+b128",
)
TINY_LADDER = ("naive", "bf16+cl", "bf16+cl+fused+roi_align", "fused+analytic+compile")
TINY_BEST = "bench+bf16+cl+fused+analytic"
#: preset -> (batch, warmup, steps, repeats, ladder, best, compile backend, budget s)
PRESETS: dict[str, tuple[Any, ...]] = {
    "tiny": (4, 1, 2, 2, TINY_LADDER, TINY_BEST, "aot_eager", None),
    "quick": (64, 3, 5, 3, QUICK_LADDER, DEFAULT_BEST, "inductor", 420.0),
    "full": (64, 5, 10, 5, LADDER, DEFAULT_BEST, "inductor", None),
}


def build_parser() -> argparse.ArgumentParser:
    p = command_parser("stn-bench", __doc__)
    p.add_argument("--device", choices=("auto", "cuda", "cpu"), default="auto")
    p.add_argument("--tiny", action="store_true", help="CPU CI mode: small backbone and sizes")
    p.add_argument("--quick", action="store_true", help="the ~8 minute H100 preset")
    p.add_argument("--backbones", nargs="+", default=list(BACKBONES), choices=BACKBONES)
    p.add_argument("--cells", nargs="+", default=list(CELLS), choices=list(CELLS))
    p.add_argument("--batch-size", type=int, default=None, help="default 64 (4 with --tiny)")
    p.add_argument("--steps", type=int, default=None, help="steps per timed window (10)")
    p.add_argument("--warmup", type=int, default=None, help="warm-up steps (5)")
    p.add_argument("--repeats", type=int, default=None, help="timed windows (5)")
    p.add_argument("--levers", nargs="+", default=None, help="ablation ladder (lever strings)")
    p.add_argument("--best", default=None, help=f"config for the matrix (default {DEFAULT_BEST})")
    p.add_argument("--ablation-cells", nargs="+", default=None, choices=list(CELLS))
    p.add_argument("--parts", nargs="+", default=["sampler", "matrix", "ablation"],
                   choices=("sampler", "matrix", "ablation"))  # fmt: skip
    p.add_argument("--modes", nargs="+", default=["model", "e2e"], choices=("model", "e2e"))
    p.add_argument("--num-workers", type=int, default=None, help="default min(16, cpu_count)")
    p.add_argument("--data-root", default=None, help="CUB-layout folder (default: synthetic)")
    p.add_argument("--data-cache", default="data", help="synthetic data folder")
    p.add_argument("--budget-s", type=float, default=None, help="stop measuring after this")
    p.add_argument("--table1", action="store_true",
                   help="Table 1 cells on the CPU (stnrepro.bench.digits)")  # fmt: skip
    p.add_argument("--distortions", nargs="+", default=list(DIGIT_DISTORTIONS),
                   choices=DIGIT_DISTORTIONS, help="--table1 cells")  # fmt: skip
    p.add_argument("--models", nargs="+", default=list(DIGIT_MODELS), choices=list(DIGIT_MODELS),
                   help="--table1 cells")  # fmt: skip
    p.add_argument(
        "--override",
        nargs="+",
        default=[],
        metavar="KEY=VALUE",
        help="--table1: more training overrides (e.g. data.train_limit=2048)",
    )
    p.add_argument(
        "--out",
        default=None,
        help="report (default results/benchmark.md; --table1 results/benchmark_cpu.md)",
    )
    p.add_argument("--json", default=None, help="JSON results (default: --out with .json)")
    p.add_argument("--seed", type=int, default=0)
    keep = "keep the complete cells of the existing --json and measure the rest"
    p.add_argument("--resume", action="store_true", help=keep)
    return p


def resolve(args: argparse.Namespace) -> Settings:
    """Presets (--tiny, --quick) then explicit options; validates lever strings."""
    if args.device == "auto":
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    else:
        if args.device == "cuda" and not torch.cuda.is_available():
            raise UsageError("--device cuda: no CUDA device is available on this machine")
        device = torch.device(args.device)
    preset = "tiny" if args.tiny else "quick" if args.quick else "full"
    batch, warmup, steps, repeats, ladder, best, backend, budget = PRESETS[preset]
    workers = 0 if args.tiny else min(16, os.cpu_count() or 1)
    try:
        ladder_levers = [parse_lever(x) for x in (args.levers or ladder)]
        best_lever = parse_lever(args.best or best)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    if ladder_levers[0].name != NAIVE:
        ladder_levers.insert(0, parse_lever(NAIVE))
    ablation_cells = args.ablation_cells or (
        ["cnn224", "4st448"] if not args.tiny else [args.cells[-1]]
    )
    out = Path(args.out or "results/benchmark.md")
    return Settings(
        device=device,
        tiny=args.tiny,
        backbones=["small"] if args.tiny else list(dict.fromkeys(args.backbones)),
        cells=[c for c in CELLS if c in args.cells],
        batch_size=args.batch_size or batch,
        warmup=max(1, args.warmup or warmup),
        steps=max(1, args.steps or steps),
        repeats=max(1, args.repeats or repeats),
        workers=max(0, workers if args.num_workers is None else args.num_workers),
        best=best_lever,
        ladder=ladder_levers,
        ablation_cells=[c for c in CELLS if c in ablation_cells],
        parts=list(args.parts),
        modes=list(args.modes),
        compile_backend=backend,
        budget_s=args.budget_s if args.budget_s is not None else budget,
        data_root=args.data_root,
        data_cache=args.data_cache,
        out=out,
        json_path=Path(args.json) if args.json else out.with_suffix(".json"),
        seed=args.seed,
        resume=args.resume,
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``stn-bench``; returns the exit status (0 ok, 2 bad input)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    return run_command(build_parser(), lambda args: measure(args, argv), argv)


@contextlib.contextmanager
def quiet_measurements() -> Iterator[None]:
    """Torch's global state kept (:func:`global_state_kept`), and no noise between rows."""
    for name in ("pytorch_lightning", "lightning.pytorch", "lightning.fabric"):
        logging.getLogger(name).setLevel(logging.WARNING)  # no per-fit banners between rows
    with global_state_kept(), warnings.catch_warnings():
        # model-only steps run training_step outside a fit (its self.log calls are no-ops);
        # the ThroughputMonitor asks for FLOPs, which the report does not use.
        warnings.filterwarnings("ignore", message=".*self.trainer. reference is not registered")
        warnings.filterwarnings("ignore", message=".*flops_per_batch")
        yield


def resolve_table1(args: argparse.Namespace) -> DigitSettings:
    """--table1's settings: 3 warm-up steps and 3 windows of 5 steps unless told."""
    if args.device == "cuda":
        raise UsageError("--table1 measures the CPU: drop --device cuda")
    try:
        ladder = [parse_lever(x).name for x in (args.levers or DIGIT_LADDER)]
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    out = Path(args.out or "results/benchmark_cpu.md")
    return DigitSettings(
        out=out,
        json_path=Path(args.json) if args.json else out.with_suffix(".json"),
        distortions=[d for d in DIGIT_DISTORTIONS if d in args.distortions],
        models=[m for m in DIGIT_MODELS if m in args.models],
        ladder=ladder,
        batch_size=args.batch_size,
        warmup=max(1, args.warmup or 3),
        steps=max(1, args.steps or 5),
        repeats=max(2, args.repeats or 3),
        data_root=args.data_root,
        extra=list(args.override),
    )


def measure_table1(args: argparse.Namespace, argv: Sequence[str]) -> int:
    s = resolve_table1(args)
    with quiet_measurements():
        t0 = time.perf_counter()
        run_digits(s, argv)
    print(f"[bench] wrote {s.out} and {s.json_path} in {time.perf_counter() - t0:.0f}s")
    print(s.out.read_text(encoding="utf-8"))
    return 0


def measure(args: argparse.Namespace, argv: Sequence[str]) -> int:
    """Run the benchmark, write the Markdown report and JSON, print the report last."""
    if args.table1:
        return measure_table1(args, argv)
    s = resolve(args)
    with quiet_measurements():
        if s.tiny:
            # Correctness, not speed: one thread is immune to CPU oversubscription (CI runners,
            # parallel test jobs), where spinning OpenMP threads can be 10x slower.
            torch.set_num_threads(1)
        bench = Benchmark(s, argv)
        print(f"[bench] device={s.device} backbones={s.backbones} cells={s.cells} "
              f"best={s.best.name} budget={s.budget_s}", flush=True)  # fmt: skip
        bench.run()
    print(f"[bench] wrote {s.out} and {s.json_path} in {bench.elapsed():.0f}s", flush=True)
    print(s.out.read_text(encoding="utf-8"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
