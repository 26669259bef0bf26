#!/usr/bin/env python
"""Download, verify, safely extract and validate CUB-200-2011.

Usage: python scripts/download_cub.py --out DIR [--url URL] [--md5 MD5]
                                      [--archive EXISTING.tgz] [--keep-archive] [--quiet]

The dataset ends up in DIR/CUB_200_2011 (use it as ``data.root``).  Exit code 2 with a
one-line ``error: ...`` on failure.  The logic lives in :mod:`stnrepro.data.download`.
"""

from __future__ import annotations

import sys
from pathlib import Path

try:
    from stnrepro.data.download import main
except ModuleNotFoundError:  # running from a checkout without `pip install -e .`
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
    from stnrepro.data.download import main

if __name__ == "__main__":
    raise SystemExit(main())
