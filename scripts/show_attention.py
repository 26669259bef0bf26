"""Same as ``stn-attention ARGS`` (kept for existing commands and docs)."""

import sys

from stnrepro.cli.attention import main

if __name__ == "__main__":
    sys.exit(main())
