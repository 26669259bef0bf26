"""Same as the ``stn-table`` console script (``stnrepro.cli.table``), for a source checkout."""

from stnrepro.cli.table import main

if __name__ == "__main__":
    raise SystemExit(main())
