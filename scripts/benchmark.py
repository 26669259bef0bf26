"""Shim for ``stn-bench`` (stnrepro.cli.bench), kept so that old commands still work:

PYTHONPATH=src python scripts/benchmark.py --tiny --device cpu --out /tmp/b.md
"""

import sys
from pathlib import Path

try:
    from stnrepro.cli.bench import main
except ImportError:  # run from a checkout without installing: use its src/
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
    from stnrepro.cli.bench import main

if __name__ == "__main__":
    sys.exit(main())
