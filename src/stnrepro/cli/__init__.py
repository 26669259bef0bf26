"""Console-script entry points (``stn-bench`` ...): argument parsing around the package."""
