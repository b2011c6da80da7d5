"""Precision search: candidate space + costs, sensitivity, MILP solver, validation with back-off.

Small parts, each replaceable (space.py, sensitivity.py, solver.py, validate.py with rows_subset.py),
tied together by run.py. Search writes a `Plan`; convert reads it.
"""
