"""Same as ``stn-data download ARGS`` (kept for existing commands and docs)."""

import sys

from stnrepro.cli.data import main

if __name__ == "__main__":
    sys.exit(main(["download", *sys.argv[1:]]))
