"""Training-time machinery of the float DLRM: FBGEMM's fused training TBE over every table
(`fused_tables`), the batched id transforms that feed it (`id_maps`), and the batched exact ROBE
lookup with its fused update (`robe_batched`). The epoch loop itself lives in `lowprec.train`.
"""
