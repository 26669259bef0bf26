"""Datasets in the CUB-200-2011 layout: the real one and a procedurally generated stand-in."""
