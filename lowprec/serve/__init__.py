"""Serving: how a trained DLRM becomes quantized tensors and runs on FBGEMM's inference kernels.

One handler per concept, each in one literal registry (nothing registers itself on import):
- `tables.TABLE_CODECS`: per table precision (fp32, fp16, fp8, int8, int4, int2): encode float rows
  into the TBE's row bytes, decode them, bytes for a shape, the TBE table spec;
- `layers.LAYER_CODECS`: per layer precision (fp32, fp16, int8): encode a Linear into stored
  tensors, build its serving module, bytes for a shape;
- `sharing.SHARING_KINDS`: per sharing kind (dense, hash, qr, robe trained; hot post-training): the
  serving form (physical tables + id transforms) and its bytes;
- `transforms.TRANSFORMS`: per id-transform kind, a TorchScript-compatible module.
`forms` is the serving form, `quantize` turns forms into quantized forms and runtime modules,
`runtime` is the FBGEMM runtime (`QuantizedDLRM`), `sharded` the same runtime with its tables spread
over the ranks of a process group (`ShardedDLRM`, shard plans), `export` its TorchScript export. Conversion
(lowprec.checkpoint.convert), the artifact loader, the search's byte model and emulator, and drift's
per-row error all go through these handlers.
"""
