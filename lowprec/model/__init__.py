"""Models: the float DLRM, its embedding backends, and (in `quantized`) the FBGEMM runtime."""
