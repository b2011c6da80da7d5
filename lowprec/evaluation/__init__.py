"""Evaluation, shared by search and drift: scoring a model over windows, metrics over mergeable
sufficient statistics, and the paired comparison of two models on the same rows.

- `metrics`: NE, log-loss, AUC, calibration over `BinaryStats` (windows merge by addition);
- `scoring`: one model over windows -> per-window and overall stats (`evaluate`, `predict`);
- `paired`: reference and candidate on the same rows in one streamed pass (`evaluate_window`);
- `stats`: the paired statistics it uses (DeLong, Poisson bootstrap, delta method, row errors).
"""
