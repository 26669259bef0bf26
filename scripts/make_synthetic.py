#!/usr/bin/env python
"""Write a synthetic fine-grained bird dataset in the CUB-200-2011 layout.

Usage: python scripts/make_synthetic.py --preset synth_birds_tiny --out data/synth_tiny
       [--seed N] [--num-classes N] [--images-per-class N] [--width W] [--height H]
       [--set KEY=VALUE ...] [--workers N] [--quiet]

``--out`` is the dataset folder itself (what ``CUBDataModule(root=...)`` takes).  It is
written atomically (temporary sibling, then rename); an existing complete folder with the same
settings is reused, anything else already there is refused.  The training job does not need
this script: the data module generates into ``paths.data_dir`` on first use.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import time
import uuid
from pathlib import Path

from stnrepro.errors import ConfigError, StnreproError


class _UsageError(Exception):
    pass


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line, exit 2 (raised to main)
        raise _UsageError(message)


def _parser() -> argparse.ArgumentParser:
    p = _Parser(description=__doc__.split("\n\n")[0])
    p.add_argument("--preset", required=True, help="synth_birds or synth_birds_tiny")
    p.add_argument("--out", required=True, help="dataset folder to create")
    p.add_argument("--seed", type=int, default=0, help="generator seed (default 0)")
    p.add_argument("--num-classes", type=int, default=None)
    p.add_argument("--images-per-class", type=int, default=None)
    p.add_argument("--width", type=int, default=None, help="nominal image width (pixels)")
    p.add_argument("--height", type=int, default=None, help="nominal image height (pixels)")
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="any other generator setting, e.g. --set max_rotation_deg=15 (repeatable)",
    )
    p.add_argument("--workers", type=int, default=None, help="processes (default: all cores)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    return p


def _parse_set(item: str) -> tuple[str, int | float]:
    key, sep, value = item.partition("=")
    if not sep or not key:
        raise ConfigError(f"--set {item!r}: expected KEY=VALUE")
    try:
        return key.strip(), int(value)
    except ValueError:
        pass
    try:
        return key.strip(), float(value)
    except ValueError:
        raise ConfigError(f"--set {item!r}: expected a number after '='") from None


def main(argv: list[str] | None = None) -> int:
    try:
        args = _parser().parse_args(argv)
    except _UsageError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except SystemExit as exc:  # --help
        return int(exc.code or 0)

    from stnrepro.data import synthetic

    try:
        values: dict[str, int | float | None] = {
            "num_classes": args.num_classes,
            "images_per_class": args.images_per_class,
            "image_width": args.width,
            "image_height": args.height,
        }
        for key, value in (_parse_set(item) for item in args.set):
            if key in ("preset", "gen_seed") or values.get(key) is not None:
                raise ConfigError(f"--set {key}: given twice (or use --preset/--seed)")
            values[key] = value
        settings = synthetic.make_settings(args.preset, gen_seed=args.seed, **values)
        if args.workers is not None and args.workers < 1:
            raise ConfigError(f"--workers={args.workers}: expected a positive integer")
        out = Path(args.out).expanduser().absolute()
        if synthetic.is_complete(out, settings):
            print(f"{out}: already generated with these settings, nothing to do")
            return 0
        if out.exists():
            raise synthetic.DataError(
                f"--out {out}: already exists and is not this dataset; remove it or pick another"
            )
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = out.parent / f".{out.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        start = time.perf_counter()
        try:
            synthetic.generate(settings, tmp, workers=args.workers, progress=not args.quiet)
            os.rename(tmp, out)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        took = time.perf_counter() - start
    except (StnreproError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"{out}: {settings.num_images} images, {settings.num_classes} classes in {took:.1f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
