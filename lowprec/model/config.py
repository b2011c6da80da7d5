"""Model configuration: frozen, validated, JSON round-trippable.

A DLRM is described entirely by `DLRMConfig`; the float checkpoint's config.json and the quantized
artifact's manifest both embed `DLRMConfig.to_json()`, so any model can be rebuilt from its files.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from lowprec.errors import InputError

CONFIG_VERSION = 1


@dataclass(frozen=True)
class TableConfig:
    name: str
    num_embeddings: int
    hotness: int = 1  # id slots per sample in the dataset's sparse matrix (pooled by sum)
    embedding: str = "dense"  # backend SPEC, see lowprec.model.embedding
    encoding: str | None = None  # the training data's id encoding fingerprint (lowprec.data.encoding)

    def __post_init__(self) -> None:
        types = {"name": (str,), "num_embeddings": (int,), "hotness": (int,), "embedding": (str,),
                 "encoding": (str, type(None))}
        for key, ok in types.items():
            v = getattr(self, key)
            if not isinstance(v, ok) or isinstance(v, bool):
                raise InputError(f"table {self.name!r}: {key} = {v!r} is not {' or '.join(t.__name__ for t in ok)}")
        if self.num_embeddings < 1 or self.hotness < 1:
            raise InputError(f"table {self.name!r}: num_embeddings and hotness must be >= 1")


@dataclass(frozen=True)
class DLRMConfig:
    """Bottom MLP over dense features, one pooled embedding per table, dot interaction, top MLP."""

    dense_in: int
    tables: tuple[TableConfig, ...]
    embedding_dim: int = 16
    bottom_mlp: tuple[int, ...] = (64, 16)
    top_mlp: tuple[int, ...] = (64, 32)
    dense_names: tuple[str, ...] = field(default=())

    def __post_init__(self) -> None:
        if self.embedding_dim < 1:
            raise InputError("embedding_dim must be >= 1")
        if not self.bottom_mlp or self.bottom_mlp[-1] != self.embedding_dim:
            raise InputError(
                f"the bottom MLP must end at embedding_dim={self.embedding_dim} for the dot "
                f"interaction, got bottom_mlp={list(self.bottom_mlp)}"
            )
        if any(w < 1 for w in self.bottom_mlp + self.top_mlp):
            raise InputError("MLP widths must be >= 1")
        names = [t.name for t in self.tables]
        if len(set(names)) != len(names):
            raise InputError(f"duplicate table names in {names}")

    @property
    def table_names(self) -> list[str]:
        return [t.name for t in self.tables]

    @property
    def interaction_dim(self) -> int:
        f = len(self.tables) + 1
        return self.embedding_dim + f * (f - 1) // 2

    def dense_fp32_bytes(self) -> int:
        """The tables' bytes as dense fp32 tables (rows x dim x 4), whatever sharing they were trained
        with: what compression ratios divide (a manifest's fp32_embedding_bytes)."""
        return sum(t.num_embeddings * self.embedding_dim * 4 for t in self.tables)

    def layer_shapes(self) -> dict[str, tuple[int, int]]:
        """Name -> (in, out) of every Linear layer, in forward order: bottom.i then top.i."""
        shapes: dict[str, tuple[int, int]] = {}
        width = self.dense_in
        for i, out in enumerate(self.bottom_mlp):
            shapes[f"bottom.{i}"] = (width, out)
            width = out
        width = self.interaction_dim
        for i, out in enumerate(self.top_mlp + (1,)):
            shapes[f"top.{i}"] = (width, out)
            width = out
        return shapes

    def replace_tables(self, tables: list[TableConfig]) -> "DLRMConfig":
        return DLRMConfig(self.dense_in, tuple(tables), self.embedding_dim, self.bottom_mlp,
                          self.top_mlp, self.dense_names)

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        d["version"] = CONFIG_VERSION
        return d

    @classmethod
    def from_json(cls, obj: dict[str, Any], where: str = "config") -> "DLRMConfig":
        try:
            if obj.get("version") != CONFIG_VERSION:
                raise InputError(f"{where}: model config version {obj.get('version')} is not supported "
                                 f"(expected {CONFIG_VERSION})")
            return cls(
                dense_in=int(obj["dense_in"]),
                tables=tuple(TableConfig(**t) for t in obj["tables"]),
                embedding_dim=int(obj["embedding_dim"]),
                bottom_mlp=tuple(int(x) for x in obj["bottom_mlp"]),
                top_mlp=tuple(int(x) for x in obj["top_mlp"]),
                dense_names=tuple(obj.get("dense_names", ())),
            )
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise InputError(f"{where}: malformed model config ({exc!r})") from exc
        except InputError as exc:  # the config's own checks (dims, names, hotness): say which file
            if str(exc).startswith(f"{where}: "):
                raise
            raise InputError(f"{where}: {exc}") from None
