"""lowprec: ship DLRM-style recommendation models in low precision.

Importing the package checks that torch and fbgemm_gpu load together (see `_compat`), because every
quantized path runs on FBGEMM's kernels and a mismatched pair otherwise fails deep inside a dlopen.
"""

from lowprec._compat import check_torch_fbgemm

__version__ = "0.1.0"

TORCH_VERSION, FBGEMM_VERSION = check_torch_fbgemm()

__all__ = ["__version__", "TORCH_VERSION", "FBGEMM_VERSION"]
