"""Tests of `lowprec drift` (lowprec/drift, lowprec/cli/drift.py)."""
