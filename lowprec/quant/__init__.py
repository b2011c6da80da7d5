"""Quantization primitives: pure tensor math, no modules, no I/O.

`rowwise` owns row-wise (de)quantization of embedding tables in the byte layout FBGEMM's inference
TBE consumes; `range_search` owns choosing each row's clipping range (min/max or L2-optimal).
"""
