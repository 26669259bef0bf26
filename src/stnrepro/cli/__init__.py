"""Command-line tools installed as console scripts (``stn-data``, ``stn-attention``)."""
