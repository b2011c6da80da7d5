"""`python -m lowprec.cli` runs the CLI (used where the console script is not on PATH)."""

from lowprec.cli import main

main()
