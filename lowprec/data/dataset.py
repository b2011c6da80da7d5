"""The prepared-dataset format: TorchRec's per-day Criteo layout plus `dataset.json`.

A prepared dataset is a directory with, per time window i,

    day_{i}_dense.npy    float32 (rows, n_dense)   model-ready dense features
    day_{i}_sparse.npy   int32/int64 (rows, slots) categorical ids; -1 pads unused multi-hot slots
    day_{i}_labels.npy   int32 (rows, 1) or (rows,) 0/1 labels

and `dataset.json` naming the features, num_embeddings per table, the multi-hot layout (how many
slots each sparse feature owns, pooled by sum over the ids that are not -1), each window's time range
and row count, and provenance. With one slot per feature this is exactly TorchRec's preprocessed
Criteo layout, so such a directory plus a `dataset.json` is a lowprec dataset.

Writing streams: `DatasetWriter` appends chunks to each .npy and patches the header when the window
closes, so preparing a dataset never holds a whole window in memory. It counts each window's
positives, and a window with no rows, or with one label class only (no positives, or no negatives:
its AUC is undefined and no model can learn from it alone), is listed in provenance `warnings`. The
CLI says a dataset's warnings (`warning: ...` on stderr) once the dataset is written: a run that
fails later (no valid rows, too many bad rows) said nothing about windows it never wrote.
"""

from __future__ import annotations

import contextlib
import struct
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from lowprec.errors import InputError
from lowprec.data.npyfiles import load_window_array
from lowprec.fileio import read_json, resolve_output, write_json

FORMAT = "lowprec-dataset"
FORMAT_VERSION = 1
PAD_ID = -1
MAX_NUM_EMBEDDINGS = 2**31 - 1  # ids are int32 in prepared datasets (TorchRec's layout)
MAX_HOTNESS = 4096  # slots one sparse feature may own in a row


@dataclass(frozen=True)
class SparseFeature:
    name: str
    num_embeddings: int
    hotness: int = 1  # slots this feature owns in the sparse matrix
    encoding: str | None = None  # fingerprint of how values became ids (lowprec.data.encoding)

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name:
            raise InputError(f"sparse feature name {self.name!r} must be a non-empty string")
        if not 1 <= self.num_embeddings <= MAX_NUM_EMBEDDINGS:
            raise InputError(f"sparse feature {self.name!r}: num_embeddings {self.num_embeddings} must be in "
                             f"[1, {MAX_NUM_EMBEDDINGS}] (ids are int32)")
        if not 1 <= self.hotness <= MAX_HOTNESS:
            raise InputError(f"sparse feature {self.name!r}: hotness {self.hotness} must be in [1, {MAX_HOTNESS}]")


@dataclass(frozen=True)
class WindowInfo:
    index: int
    rows: int
    label: str = ""
    start: str | None = None  # ISO-8601 time (or a row offset) where the window starts
    end: str | None = None


@dataclass(frozen=True)
class DatasetMeta:
    dense_names: tuple[str, ...]
    sparse: tuple[SparseFeature, ...]
    windows: tuple[WindowInfo, ...]
    provenance: dict[str, Any] = field(default_factory=dict)

    @property
    def sparse_names(self) -> list[str]:
        return [f.name for f in self.sparse]

    @property
    def num_embeddings(self) -> list[int]:
        return [f.num_embeddings for f in self.sparse]

    @property
    def hotness(self) -> list[int]:
        return [f.hotness for f in self.sparse]

    @property
    def slots(self) -> int:
        return sum(self.hotness)

    @property
    def slot_offsets(self) -> list[int]:
        """Column where each sparse feature's slots start; the last entry is the total."""
        out = [0]
        for h in self.hotness:
            out.append(out[-1] + h)
        return out

    @property
    def window_indices(self) -> list[int]:
        return [w.index for w in self.windows]

    def window(self, index: int) -> WindowInfo:
        for w in self.windows:
            if w.index == index:
                return w
        raise InputError(f"window {index} not in the dataset")

    def to_json(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "version": FORMAT_VERSION,
            "dense_features": list(self.dense_names),
            "sparse_features": self.sparse_names,
            "num_embeddings": self.num_embeddings,
            "multi_hot": {"hotness": self.hotness, "padding_id": PAD_ID, "pooling": "sum"},
            **({"encodings": [f.encoding for f in self.sparse]} if any(f.encoding for f in self.sparse) else {}),
            "windows": [asdict(w) for w in self.windows],
            "provenance": self.provenance,
        }

    @classmethod
    def from_json(cls, obj: dict[str, Any], where: str) -> "DatasetMeta":
        try:
            if obj.get("format") != FORMAT:
                raise InputError(f"{where}: not a lowprec dataset (format {obj.get('format')!r})")
            if obj.get("version") != FORMAT_VERSION:
                raise InputError(
                    f"{where}: dataset format version {obj.get('version')} is not supported "
                    f"(this lowprec reads version {FORMAT_VERSION})"
                )
            names, nums = _list(obj, "sparse_features", where), _list(obj, "num_embeddings", where)
            hot = (obj.get("multi_hot") or {}).get("hotness", [1] * len(names))
            enc = obj.get("encodings") or [None] * len(names)
            if not (len(names) == len(nums) == len(hot) == len(enc)):
                raise InputError(f"{where}: sparse_features, num_embeddings, hotness and encodings differ in length")
            sparse = tuple(SparseFeature(n, _int(e), _int(h), None if c is None else str(c))
                           for n, e, h, c in zip(names, nums, hot, enc))
            windows = tuple(
                WindowInfo(_int(w["index"]), _int(w["rows"]), str(w.get("label") or ""), w.get("start"), w.get("end"))
                for w in _list(obj, "windows", where)
            )
            dense = _list(obj, "dense_features", where)
            if not all(isinstance(d, str) for d in dense) or any(w.rows < 0 for w in windows):
                raise InputError(f"{where}: dense_features must be names and window rows >= 0")
            if len({w.index for w in windows}) != len(windows):
                raise InputError(f"{where}: window indices repeat")
            prov = obj.get("provenance") or {}
            return cls(tuple(dense), sparse, windows, prov if isinstance(prov, dict) else {})
        except (KeyError, TypeError, ValueError, AttributeError, OverflowError) as exc:
            raise InputError(f"{where}: malformed dataset.json ({exc!r})") from exc


def _int(x: Any) -> int:
    if isinstance(x, bool) or not isinstance(x, (int, float)) or x != int(x):
        raise ValueError(f"{x!r} is not an integer")
    return int(x)


def _list(obj: dict[str, Any], key: str, where: str) -> list[Any]:
    value = obj[key]
    if not isinstance(value, list):
        raise InputError(f"{where}: {key} must be a list, found {type(value).__name__}")
    return value


def check_table_bytes(meta: DatasetMeta, dim: int, where: str = "--data") -> None:
    """Refuse tables that cannot fit this machine's memory before allocating them (float32, D=dim)."""
    from lowprec.memory import physical_bytes

    total = sum(meta.num_embeddings) * max(int(dim), 1) * 4
    ram = physical_bytes()
    if ram is not None and total > ram:
        big = max(meta.sparse, key=lambda f: f.num_embeddings)
        raise InputError(f"{where}: the tables need {total / 2**30:.1f} GiB in fp32 at dim {dim} (largest: "
                         f"{big.name!r}, {big.num_embeddings:,} rows) but this machine has {ram / 2**30:.1f} GiB")


def window_files(root: Path, index: int) -> dict[str, Path]:
    return {k: root / f"day_{index}_{k}.npy" for k in ("dense", "sparse", "labels")}


class Dataset:
    """A prepared dataset on disk; arrays are memory-mapped, never loaded whole."""

    def __init__(self, root: str | Path):
        self.root = resolve_output(root)
        if not self.root.is_dir():
            raise InputError(f"dataset directory not found: {self.root}")
        self.meta = DatasetMeta.from_json(
            read_json(self.root / "dataset.json", "dataset.json"), str(self.root / "dataset.json")
        )

    def arrays(self, index: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(dense, sparse, labels) of one window as read-only memmaps, shape-checked."""
        info = self.meta.window(index)
        files = window_files(self.root, index)
        dense, sparse, labels = (load_window_array(path, index, kind) for kind, path in files.items())
        n_dense, slots = len(self.meta.dense_names), self.meta.slots
        if labels.ndim == 2 and labels.shape[1] == 1:
            labels = labels[:, 0]
        checks = [
            (dense, (info.rows, n_dense), files["dense"]),
            (sparse, (info.rows, slots), files["sparse"]),
            (labels, (info.rows,), files["labels"]),
        ]
        for arr, shape, path in checks:
            if arr.shape != shape:
                raise InputError(f"{path}: shape {arr.shape}, dataset.json says {shape}")
        return dense, sparse, labels


def window_problem(rows: int, positives: int) -> str | None:
    """Why a window of `rows` rows with `positives` positive labels is of no use alone, or None."""
    if rows == 0:
        return ("holds no rows (an empty or header-only input, or every row was bad); commands skip it, "
                "and refuse it when it is all they are given")
    if positives in (0, rows):
        kind, other = ("negatives", "positive") if positives == 0 else ("positives", "negative")
        return (f"holds only {kind} ({rows:,} row{'s' * (rows != 1)}, no {other} label): its AUC is undefined; check the "
                f"label column (and a CSV schema's `positive` rule)")
    return None


def _npy_header(dtype: np.dtype, shape: tuple[int, ...]) -> bytes:
    """A fixed 128-byte .npy v1 header, so it can be patched in place once the row count is known."""
    d = {"descr": np.lib.format.dtype_to_descr(np.dtype(dtype)), "fortran_order": False, "shape": shape}
    text = repr(d)
    total = 128
    text = text + " " * (total - 10 - len(text) - 1) + "\n"
    return b"\x93NUMPY\x01\x00" + struct.pack("<H", len(text)) + text.encode("latin1")


class _NpyAppender:
    def __init__(self, path: Path, dtype: Any, width: int | None):
        self.path, self.dtype, self.width, self.rows = path, np.dtype(dtype), width, 0
        self.fh = open(path, "wb")
        try:
            self.fh.write(_npy_header(self.dtype, (0,) if width is None else (0, width)))
        except BaseException:
            self.fh.close()
            raise

    def append(self, arr: np.ndarray) -> None:
        arr = np.ascontiguousarray(arr, dtype=self.dtype)
        expected = 1 if self.width is None else 2
        if arr.ndim != expected or (self.width is not None and arr.shape[1] != self.width):
            raise ValueError(f"{self.path.name}: chunk shape {arr.shape} does not match width {self.width}")
        self.fh.write(arr.tobytes())
        self.rows += arr.shape[0]

    def close(self) -> None:
        shape = (self.rows,) if self.width is None else (self.rows, self.width)
        self.fh.seek(0)
        self.fh.write(_npy_header(self.dtype, shape))
        self.fh.close()


class WindowWriter:
    """Streams one window's rows to disk in chunks."""

    def __init__(self, root: Path, index: int, n_dense: int, slots: int, info: dict[str, Any]):
        files = window_files(root, index)
        self.index, self.info, self.positives = index, info, 0
        self._files: list[_NpyAppender] = []
        with self._closed_on_error():
            for name, dtype, width in (("dense", np.float32, n_dense), ("sparse", np.int32, slots),
                                       ("labels", np.int32, 1)):
                self._files.append(_NpyAppender(files[name], dtype, width))
        self._dense, self._sparse, self._labels = self._files

    @contextlib.contextmanager
    def _closed_on_error(self) -> Iterator[None]:
        """On any error (a full disk), close the window's files before it propagates: the traceback
        keeps this writer alive until garbage collection, and an unlinked file that is still open
        keeps its disk space."""
        try:
            yield
        except BaseException:
            for a in self._files:
                with contextlib.suppress(OSError):
                    a.fh.close()
            raise

    def append(self, dense: np.ndarray, sparse: np.ndarray, labels: np.ndarray) -> None:
        if not (len(dense) == len(sparse) == len(labels)):
            raise ValueError("dense, sparse and labels chunks differ in length")
        if len(dense) == 0:
            return
        with self._closed_on_error():
            self._dense.append(dense)
            self._sparse.append(sparse)
            self._labels.append(np.asarray(labels).reshape(-1, 1))
        self.positives += int(np.count_nonzero(labels))

    @property
    def rows(self) -> int:
        return self._dense.rows

    def close(self) -> WindowInfo:
        with self._closed_on_error():
            for a in self._files:
                a.close()
        return WindowInfo(self.index, self.rows, **self.info)


class DatasetWriter:
    """Writes a dataset into `root` (normally the temporary dir of `fileio.atomic_dir`)."""

    def __init__(
        self,
        root: str | Path,
        dense_names: list[str],
        sparse: list[SparseFeature],
        provenance: dict[str, Any] | None = None,
        after: tuple[int, int] = (0, 0),
    ):
        """`after`: the (windows, rows) of a dataset the windows written here will follow (`data
        append`): warnings name each window by its index there, and `rows:N` windows count rows from
        there, so both say what the dataset will hold."""
        self.root = Path(root)
        self.after = after
        self.root.mkdir(parents=True, exist_ok=True)
        self.dense_names, self.sparse = tuple(dense_names), tuple(sparse)
        self.provenance = dict(provenance or {})
        self.windows: list[WindowInfo] = []
        self.warnings: list[str] = []

    @property
    def slots(self) -> int:
        return sum(f.hotness for f in self.sparse)

    def window(self, label: str = "", start: str | None = None, end: str | None = None) -> WindowWriter:
        """Open the next window; call `.close()` on it (or use `add_window`) when done."""
        return WindowWriter(
            self.root, len(self.windows), len(self.dense_names), self.slots,
            {"label": label, "start": start, "end": end},
        )

    def add_window(self, writer: WindowWriter) -> WindowInfo:
        info = writer.close()
        self.windows.append(info)
        problem = window_problem(info.rows, writer.positives)
        if problem:
            name = f"window {self.after[0] + info.index}" + (f" ({info.label!r})" if info.label else "")
            self.warnings.append(f"{name} {problem}")
        return info

    def finish(self, num_embeddings: list[int] | None = None,
               encodings: list[str | None] | None = None) -> DatasetMeta:
        """Write dataset.json. `num_embeddings` overrides the declared sizes (e.g. after id remapping);
        `encodings` records each feature's encoding fingerprint (lowprec.data.encoding)."""
        sparse = self.sparse
        nums = num_embeddings if num_embeddings is not None else [f.num_embeddings for f in sparse]
        encs = encodings if encodings is not None else [f.encoding for f in sparse]
        sparse = tuple(SparseFeature(f.name, int(n), f.hotness, e) for f, n, e in zip(sparse, nums, encs))
        prov = {**self.provenance, "warnings": self.warnings} if self.warnings else self.provenance
        meta = DatasetMeta(self.dense_names, sparse, tuple(self.windows), prov)
        write_json(self.root / "dataset.json", meta.to_json())
        return meta
