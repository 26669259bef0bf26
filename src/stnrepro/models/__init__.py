"""Backbones, the spatial transformer and the ST-CNN classifier."""
