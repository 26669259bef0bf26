"""Check a dataset in CUB-200-2011 layout up front: index files, then every image.

    python scripts/check_data.py data/CUB_200_2011 [--workers 8]

Training checks the index files before it starts but each image only when it is first
loaded; this scans everything at once (with the same loader) and lists every bad file,
so a long run does not stop at the first broken JPEG hours in. Exit 0 when all is well,
2 otherwise.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

from tqdm import tqdm

from stnrepro.data.cub import CUBIndex
from stnrepro.data.transforms import full_view, load_view
from stnrepro.errors import DataError, StnreproError


def check_image(path: str) -> str | None:
    """None if the image decodes like it would in training, else the one-line error."""
    try:
        load_view(path, 32, full_view)
    except DataError as exc:
        return str(exc)
    return None


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="check_data.py", description=__doc__.splitlines()[0])
    parser.add_argument("root", help="the CUB_200_2011 folder (with images.txt)")
    parser.add_argument("--workers", type=int, default=min(8, os.cpu_count() or 1))
    args = parser.parse_args(argv)
    try:
        index = CUBIndex.load(args.root)
    except StnreproError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    paths = [str(index.image_path(row)) for row in range(index.num_images)]
    with ThreadPoolExecutor(max(1, args.workers)) as pool:  # PIL decodes without the GIL
        results = list(tqdm(pool.map(check_image, paths), total=len(paths), desc="images"))
    bad = [r for r in results if r is not None]
    for line in bad:
        print(f"error: {line}", file=sys.stderr)
    print(f"{index.summary()}; {len(paths) - len(bad)} of {len(paths)} images readable")
    return 2 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
