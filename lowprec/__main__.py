"""`python -m lowprec` (and `torchrun ... -m lowprec`) runs the CLI.

A rank of a data-parallel job (WORLD_SIZE > 1) leaves with `os._exit` once the command is done, its
process group torn down and its output flushed, skipping the interpreter's finalisation: a gloo
worker thread can drop the last reference to a finished collective (DDP's gradient all-reduce) a
moment later, and if that lands while the interpreter finalises, the thread cannot take the GIL
to free the tensors and the rank aborts (std::terminate from a forced unwind; seen as
"terminate called without an active exception" on ~1 in 3 test runs next to other work).
"""

import os
import sys

from lowprec import distributed as dist
from lowprec import launch as launcher
from lowprec.cli import main
from lowprec.errors import InputError

try:
    ranked = dist.env_world_size() > 1
except InputError:  # a stale or garbled torchrun environment: the CLI refuses it (exit 2, naming it)
    ranked = False
if ranked:
    try:
        main()
        code = 0
    except SystemExit as exc:
        if exc.code is None or isinstance(exc.code, int):
            code = exc.code or 0
        else:  # sys.exit("message"): printed, exit status 1
            print(exc.code, file=sys.stderr)
            code = 1
    launcher.record_exit_code(code)  # torchrun reports any failure as 1: `--nproc` hands on the ranks' own
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
main()
