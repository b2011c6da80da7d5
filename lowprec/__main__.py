"""`python -m lowprec` (and `torchrun ... -m lowprec`) runs the CLI."""

from lowprec.cli import main

main()
