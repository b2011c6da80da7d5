"""Criteo-scale study of issue 14 (full Kaggle cardinalities): run with `python -m tools.criteo_scale`."""
