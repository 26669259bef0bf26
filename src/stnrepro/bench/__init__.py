"""Training-throughput benchmark (``stn-bench``): every cell is composed from the packaged
Hydra configs and built as ``stn-train`` builds it, so what is timed is what is trained."""
