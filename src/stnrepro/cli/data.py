"""``stn-data``: make, check and fetch the datasets (CUB-200-2011 layout, MNIST format).

    stn-data generate --preset synth_birds_tiny --out data/synth_tiny [--seed N] [--set K=V]
    stn-data check data/CUB_200_2011 [--workers 8]
    stn-data download --out data/ [--archive CUB_200_2011.tgz]
    stn-data download mnist|fashion_mnist --out data/ [--mirror URL]

``generate`` writes a synthetic dataset (:mod:`stnrepro.data.synthetic`) into ``--out``,
the dataset folder itself (what ``data.root`` of ``data=cub`` takes), with the settings of
the data config ``conf/data/<preset>.yaml`` plus the options given; training does not need
it (the synthetic data module generates into ``paths.data_dir`` on first use).
``check`` scans the index files and every image with the training loader and lists every
bad file, so a long run does not stop at the first broken JPEG hours in.  ``download``
fetches, MD5-checks and safely extracts CUB-200-2011 (:mod:`stnrepro.data.download`), or
MNIST / Fashion-MNIST through torchvision's downloader into ``--out/<MNIST|FashionMNIST>/raw``
(the folder ``data.root`` of ``data=mnist`` / ``data=fashion_mnist`` takes).

Exit status 0 when all is well; 2 with one ``error: ...`` line per problem otherwise.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from stnrepro.cli.common import command_parser, run_command
from stnrepro.errors import ConfigError, DataError

__all__ = ["check_image", "main"]


def build_parser() -> argparse.ArgumentParser:
    from stnrepro.data.download import CUB_MD5, CUB_URL

    parser = command_parser("stn-data", __doc__)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    gen = sub.add_parser("generate", help="write a synthetic dataset in the CUB layout")
    gen.add_argument("--preset", required=True, help="data config: synth_birds, synth_birds_tiny")
    gen.add_argument("--out", required=True, help="dataset folder to create")
    gen.add_argument("--seed", type=int, default=None, help="generator seed (default: preset's)")
    gen.add_argument("--num-classes", type=int, default=None)
    gen.add_argument("--images-per-class", type=int, default=None)
    gen.add_argument("--width", type=int, default=None, help="nominal image width (pixels)")
    gen.add_argument("--height", type=int, default=None, help="nominal image height (pixels)")
    gen.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="any other generator setting, e.g. --set max_rotation_deg=15 (repeatable)",
    )
    gen.add_argument("--workers", type=int, default=None, help="processes (default: all cores)")
    gen.add_argument("--quiet", action="store_true", help="no progress bar")
    gen.set_defaults(run=generate)

    check = sub.add_parser("check", help="check index files and every image of a dataset")
    check.add_argument("root", help="the CUB_200_2011 folder (with images.txt)")
    check.add_argument("--workers", type=int, default=min(8, os.cpu_count() or 1))
    check.set_defaults(run=check_dataset)

    dl = sub.add_parser("download", help="download and verify CUB-200-2011, MNIST, Fashion-MNIST")
    dl.add_argument(
        "dataset", nargs="?", default="cub", choices=["cub", "mnist", "fashion_mnist"],
        help="which dataset (default cub)",
    )  # fmt: skip
    dl.add_argument("--out", required=True, type=Path, help="folder to extract into")
    dl.add_argument(
        "--mirror", help="mnist/fashion_mnist: base http(s):// URL of the four idx .gz files"
    )
    dl.add_argument("--url", default=CUB_URL, help="archive URL (http(s):// or file://)")
    dl.add_argument(
        "--md5", default=CUB_MD5,
        help="cub: expected MD5; '' skips the check (mnist/fashion_mnist: '' skips torchvision's)",
    )  # fmt: skip
    dl.add_argument("--archive", type=Path, help="use this already-downloaded .tgz")
    dl.add_argument(
        "--keep-archive", action="store_true", help="keep the downloaded .tgz after extraction"
    )
    dl.add_argument("--quiet", action="store_true", help="no progress bars")
    dl.set_defaults(run=download)
    return parser


# --------------------------------------------------------------------------- generate


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


def generate(args: argparse.Namespace) -> int:
    """Generate ``--out`` atomically; reuse it when complete with the same settings."""
    from stnrepro.data import synth_settings, synthetic

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
    if args.workers is not None and args.workers < 1:
        raise ConfigError(f"--workers={args.workers}: expected a positive integer")
    settings = synth_settings.preset_settings(args.preset, gen_seed=args.seed, **values)
    out = Path(args.out).expanduser().absolute()
    if synthetic.is_complete(out, settings):
        print(f"{out}: already generated with these settings, nothing to do")
        return 0
    start = time.perf_counter()
    synthetic.generate_into(settings, out, workers=args.workers, progress=not args.quiet)
    if args.quiet:  # otherwise generate_into has printed the same line
        took = time.perf_counter() - start
        print(f"{out}: {settings.num_images} images, {settings.num_classes} classes in {took:.1f}s")
    return 0


# --------------------------------------------------------------------------- check


def check_image(path: str) -> str | None:
    """None if the image decodes like it would in training, else the one-line error."""
    from stnrepro.data.transforms import full_view, load_view

    try:
        load_view(path, 32, full_view)
    except DataError as exc:
        return str(exc)
    return None


def check_dataset(args: argparse.Namespace) -> int:
    """Index files first (one error line), then every image (one line per bad image)."""
    from concurrent.futures import ThreadPoolExecutor

    from tqdm import tqdm

    from stnrepro.data.cub_index import CUBIndex

    index = CUBIndex.load(args.root)
    paths = [str(index.image_path(row)) for row in range(index.num_images)]
    with ThreadPoolExecutor(max(1, args.workers)) as pool:  # PIL decodes without the GIL
        results = list(tqdm(pool.map(check_image, paths), total=len(paths), desc="images"))
    bad = [r for r in results if r is not None]
    for line in bad:
        print(f"error: {line}", file=sys.stderr)
    print(f"{index.summary()}; {len(paths) - len(bad)} of {len(paths)} images readable")
    return 2 if bad else 0


# --------------------------------------------------------------------------- download


def download(args: argparse.Namespace) -> int:
    """Make ``--out/CUB_200_2011`` (or the digits' raw folder) exist and validate; one summary
    line on success."""
    from stnrepro.data.digits import DigitsDataModule
    from stnrepro.data.download import prepare_cub, prepare_digits

    if args.dataset != "cub":
        if args.archive is not None:
            raise ConfigError(f"--archive: for cub only (got {args.dataset}); use --mirror")
        raw = prepare_digits(args.dataset, args.out, args.mirror, check_md5=args.md5 != "")
        data = DigitsDataModule(str(raw), name=args.dataset).validate()
        counts = ", ".join(f"{len(data[split][1])} {split}" for split in ("train", "test"))
        print(f"{args.dataset} ready: {raw} ({counts} images)")
        print(f"train on it with: data={args.dataset} data.root={raw}")
        return 0
    if args.mirror is not None:
        raise ConfigError("--mirror: for mnist and fashion_mnist only; cub takes --url")

    index = prepare_cub(
        args.out,
        url=args.url,
        md5=args.md5,
        archive=args.archive,
        keep_archive=args.keep_archive,
        progress=not args.quiet,
        log=(lambda _msg: None) if args.quiet else (lambda msg: print(msg, file=sys.stderr)),
    )
    print(f"CUB-200-2011 ready: {index.summary()}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``stn-data``; returns the exit status (0 ok, 2 bad input or data)."""
    return run_command(build_parser(), lambda args: args.run(args), argv)


if __name__ == "__main__":
    sys.exit(main())
