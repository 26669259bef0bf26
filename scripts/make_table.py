"""Same as the ``stn-table`` console script (``stnrepro.cli.table``), for a source checkout."""

from stnrepro.cli.table import main

raise SystemExit(main())
