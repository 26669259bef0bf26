"""Run records and the comparison table built from them."""
