"""lowprec: ship DLRM-style recommendation models in low precision.

Importing the package checks that torch and fbgemm_gpu load together (see `_compat`), because every
quantized path runs on FBGEMM's kernels and a mismatched pair otherwise fails deep inside a dlopen.
Those imports take seconds: in the CLI's process a Ctrl-C or SIGTERM meanwhile is the CLI's one line
and exit code (`stopping`), installed first.
"""

from lowprec.stopping import stop_while_starting

stop_while_starting()

from lowprec._compat import check_torch_fbgemm  # noqa: E402  (after the signal handling above)

__version__ = "0.2.0"

TORCH_VERSION, FBGEMM_VERSION = check_torch_fbgemm()

__all__ = ["__version__", "TORCH_VERSION", "FBGEMM_VERSION"]
