"""stnrepro: a reproduction suite for Spatial Transformer Networks (Jaderberg et al., 2015)."""

__version__ = "0.1.0"
