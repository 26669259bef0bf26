"""Command-line entry points (console scripts), one module per command."""
