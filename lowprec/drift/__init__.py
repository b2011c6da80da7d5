"""Accuracy-drift monitoring of a quantized candidate against its float reference over time windows.

The paired pass over a window and its statistics live in `lowprec.evaluation` (search validates
plans with the same code); here `alarm` holds the thresholds and the sequential rule; `store` the SQLite history and its lock; `report` the Markdown/HTML/PNG report;
`job` ties them together for `lowprec drift`. See docs/drift.md.
"""
