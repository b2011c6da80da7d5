"""Streaming safetensors writing, for bounded-memory conversion and for models larger than RAM.

`TensorFileWriter` writes tensors straight into the output file as they are produced, whole
(`add`) or in row pieces (`stream`), so no more than one piece is ever in memory and the data is
written once. The header (8-byte length, JSON) goes in a space reserved at the start of the file
and padded with spaces, which the format allows; if the header outgrows the reserve, `close`
rewrites the file once with a larger one. The output is a standard safetensors file: the
safetensors library reads it (tests check that).

Alignment: the data starts at a multiple of ALIGN bytes of the file, and `add`/`stream` with
`align=ALIGN` start a tensor there too, after a zero-filled `__pad_N` U8 entry (the format wants
every byte indexed, so a gap is a tensor). Tables are served in place from the read-only mapping,
so a file offset is a memory offset: fp16 rows of 32 bytes at 8 mod 64, as the data start left them,
put half of them across two cache lines and fp32 rows all of them; full-scale lookups of fp16
tables ran 1.33x faster once aligned (reports/tiered.md, multi-hot section).
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
import struct
from pathlib import Path
from typing import Any, Callable, Iterator

import torch

_DTYPES = {
    torch.float32: "F32", torch.float16: "F16", torch.uint8: "U8", torch.int8: "I8",
    torch.int32: "I32", torch.int64: "I64", torch.float64: "F64", torch.bfloat16: "BF16",
}
DEFAULT_HEADER_RESERVE = 64 << 10
ALIGN = 64  # a cache line
PAD_PREFIX = "__pad_"  # zero-filled entries that align the next tensor; readers ignore them


class TensorFileWriter:
    def __init__(self, path: Path, metadata: dict[str, str] | None = None,
                 header_reserve: int = DEFAULT_HEADER_RESERVE):
        self.path = Path(path)
        self.metadata = metadata or {}
        self.reserve = -(-(max(header_reserve, 16) + 8) // ALIGN) * ALIGN - 8  # data starts ALIGN-aligned
        self.entries: list[tuple[str, str, list[int], int, int]] = []  # name, dtype, shape, start, stop
        self.fh = open(self.path, "wb")
        self.fh.seek(8 + self.reserve)
        self.offset = 0
        self._open_stream = False

    def __enter__(self) -> "TensorFileWriter":
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        """On an error (a full disk) close the file before the error propagates: the traceback keeps
        this writer alive until garbage collection, and an unlinked file still open keeps its space."""
        if exc_type is not None:
            with contextlib.suppress(OSError):
                self.fh.close()

    def _check_new(self, name: str) -> None:
        if self._open_stream:
            raise ValueError(f"tensor {name!r}: another tensor is still being streamed")
        if any(e[0] == name for e in self.entries):
            raise ValueError(f"tensor {name!r} written twice")

    def _write(self, t: torch.Tensor) -> int:
        t = t.detach().contiguous().cpu()
        size = t.numel() * t.element_size()
        if size:  # straight from the tensor's buffer, no bytes copy; a full disk raises ENOSPC
            self.fh.write(memoryview(t.reshape(-1).view(torch.uint8).numpy()))
        self.offset += size
        return size

    def _align(self, align: int) -> None:
        """Pad with a zero-filled entry so the next tensor starts at a multiple of `align` (the
        offset is counted from the data start, which is ALIGN-aligned in the file)."""
        gap = -self.offset % align
        if gap:
            pad = f"{PAD_PREFIX}{len(self.entries)}"
            start = self.offset
            self._write(torch.zeros(gap, dtype=torch.uint8))
            self.entries.append((pad, "U8", [gap], start, self.offset))

    def add(self, name: str, tensor: torch.Tensor, align: int = 1) -> int:
        """Write one tensor (starting at a multiple of `align` bytes); returns its size in bytes."""
        self._check_new(name)
        self._align(align)
        start = self.offset
        size = self._write(tensor)
        self.entries.append((name, _DTYPES[tensor.dtype], list(tensor.shape), start, start + size))
        return size

    @contextlib.contextmanager
    def stream(self, name: str, dtype: torch.dtype, shape: tuple[int, ...],
               align: int = 1) -> Iterator[Callable[[torch.Tensor], None]]:
        """Write tensor `name` of `shape` in pieces: `put(piece)` for consecutive row blocks, in order.
        On leaving the block exactly shape's bytes must have been put (ValueError otherwise); on any
        error the partial tensor is dropped. It starts at a multiple of `align` bytes."""
        self._check_new(name)
        self._align(align)
        start, need = self.offset, math.prod(shape) * torch.empty(0, dtype=dtype).element_size()
        self._open_stream = True

        def put(piece: torch.Tensor) -> None:
            if piece.dtype != dtype:
                raise ValueError(f"tensor {name!r}: piece of {piece.dtype}, expected {dtype}")
            if self.offset - start + piece.numel() * piece.element_size() > need:
                raise ValueError(f"tensor {name!r}: pieces exceed its {need} bytes")
            self._write(piece)

        try:
            yield put
            if self.offset - start != need:
                raise ValueError(f"tensor {name!r}: {self.offset - start} bytes written, shape needs {need}")
        except BaseException:  # drop the partial tensor: the file stays consistent
            self.fh.seek(8 + self.reserve + start)
            self.fh.truncate()
            self.offset = start
            raise
        finally:
            self._open_stream = False
        self.entries.append((name, _DTYPES[dtype], list(shape), start, self.offset))

    def _header(self) -> bytes:
        header: dict[str, object] = {"__metadata__": self.metadata} if self.metadata else {}
        for name, dtype, shape, start, stop in self.entries:
            header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [start, stop]}
        return json.dumps(header, separators=(",", ":")).encode()

    def close(self) -> None:
        text = self._header()
        if len(text) <= self.reserve:
            self.fh.seek(0)
            self.fh.write(struct.pack("<Q", self.reserve) + text + b" " * (self.reserve - len(text)))
            self.fh.close()
            return
        self.fh.close()  # rare: the header outgrew its reserve; shift the data once
        text += b" " * (-(8 + len(text)) % ALIGN)  # the data start stays ALIGN-aligned
        tmp = self.path.with_name(self.path.name + ".rewrite")
        with open(self.path, "rb") as src, open(tmp, "wb") as out:
            out.write(struct.pack("<Q", len(text)) + text)
            src.seek(8 + self.reserve)
            shutil.copyfileobj(src, out, 1 << 22)
        os.replace(tmp, self.path)
