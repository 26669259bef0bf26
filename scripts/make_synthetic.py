"""Same as ``stn-data generate ARGS`` (kept for existing commands and docs)."""

import sys

from stnrepro.cli.data import main

if __name__ == "__main__":
    sys.exit(main(["generate", *sys.argv[1:]]))
