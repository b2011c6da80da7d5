"""Accuracy-drift monitoring of a quantized candidate against its float reference over time windows.

`paired` scores both models on the same rows of a window in one streamed pass; `stats` holds the pure
statistics (Poisson bootstrap, DeLong, PSI, weighted table error); `alarm` the thresholds and the
sequential rule; `store` the SQLite history and its lock; `report` the Markdown/HTML/PNG report;
`job` ties them together for `lowprec drift`. See docs/drift.md.
"""
