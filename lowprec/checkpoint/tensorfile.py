"""Streaming safetensors writing and lazy float-model reading, for bounded-memory conversion.

`TensorFileWriter` spools each tensor to its own temporary raw file as it is produced, then writes
the safetensors file (8-byte header length, JSON header, data) by copying the spools in order, so
no more than one tensor is ever in memory. The output is a standard safetensors file: the
safetensors library reads it (tests check that).
"""

from __future__ import annotations

import json
import shutil
import struct
from pathlib import Path

import torch

_DTYPES = {
    torch.float32: "F32", torch.float16: "F16", torch.uint8: "U8", torch.int8: "I8",
    torch.int32: "I32", torch.int64: "I64", torch.float64: "F64", torch.bfloat16: "BF16",
}


class TensorFileWriter:
    def __init__(self, path: Path, metadata: dict[str, str] | None = None):
        self.path = Path(path)
        self.spool = self.path.with_name(self.path.name + ".spool")
        self.spool.mkdir(parents=True, exist_ok=False)
        self.entries: list[tuple[str, str, list[int], Path, int]] = []
        self.metadata = metadata or {}

    def add(self, name: str, tensor: torch.Tensor) -> int:
        """Spool one tensor; returns its size in bytes."""
        if any(e[0] == name for e in self.entries):
            raise ValueError(f"tensor {name!r} written twice")
        t = tensor.detach().contiguous().cpu()
        spool_file = self.spool / f"{len(self.entries)}.bin"
        size = t.numel() * t.element_size()
        with open(spool_file, "wb") as fh:  # straight from the tensor's buffer, no bytes copy
            if size:
                t.reshape(-1).view(torch.uint8).numpy().tofile(fh)
        self.entries.append((name, _DTYPES[t.dtype], list(t.shape), spool_file, size))
        return size

    def close(self) -> None:
        header: dict[str, object] = {"__metadata__": self.metadata} if self.metadata else {}
        offset = 0
        for name, dtype, shape, _, size in self.entries:
            header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [offset, offset + size]}
            offset += size
        text = json.dumps(header, separators=(",", ":")).encode()
        text += b" " * (-len(text) % 8)
        with open(self.path, "wb") as out:
            out.write(struct.pack("<Q", len(text)))
            out.write(text)
            for *_, spool_file, _size in self.entries:
                with open(spool_file, "rb") as src:
                    shutil.copyfileobj(src, out, 1 << 22)
        shutil.rmtree(self.spool)
