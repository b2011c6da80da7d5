"""Models: the float DLRM, its embedding backends, and (in `quantized`) the FBGEMM runtime.

The sharing module registers its embedding backends (hash, qr, robe), id transforms and
post-training sharing kinds into the registries of `embedding` and `deploy` when imported; importing
it here, with the package, means every user of those registries finds them filled.
"""

from lowprec.model import sharing as _sharing  # noqa: F401  (fills BACKENDS, TRANSFORMS, POST_TRAINING)
