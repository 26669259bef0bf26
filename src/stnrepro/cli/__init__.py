"""Command-line tools, installed as stn-table, stn-data, stn-attention and stn-bench."""
