"""The candidate space: per table (precision x sharing) and per MLP layer (precision), with costs.

An `Option` is one choice for one item (`table:NAME` or `layer:NAME`). Its byte cost is what the
artifact will store for it, as the serving handlers count it (lowprec.serve): a table's physical
rows at FBGEMM's row size for the precision under its sharing kind (plus id-transform buffers), a
layer's stored weight plus its fp32 bias.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from lowprec.errors import InputError
from lowprec.model.config import DLRMConfig, TableConfig
from lowprec.plan import LayerChoice, Plan, PlanInfo, TableChoice
from lowprec.precision import Precision
from lowprec.serve.layers import layer_codec
from lowprec.serve.sharing import serving_bytes
from lowprec.serve.tables import table_codec
from lowprec.serve.tiers import TierSpec, parse_layout

DEFAULT_TABLE_PRECISIONS = ("fp32", "fp16", "fp8", "int8", "int4", "int2")
DEFAULT_LAYER_PRECISIONS = ("fp32", "fp16", "int8")
DEFAULT_SHARING_PRECISIONS = ("int8", "int4")  # hot-shared tables' (the CLI keeps those --precisions allows)


@dataclass(frozen=True)
class SearchSpace:
    table_precisions: tuple[Precision, ...] = tuple(Precision(p) for p in DEFAULT_TABLE_PRECISIONS)
    layer_precisions: tuple[Precision, ...] = tuple(Precision(p) for p in DEFAULT_LAYER_PRECISIONS)
    sharing_ratios: tuple[float, ...] = ()  # post-training "hot" sharing ratios to consider
    sharing_precisions: tuple[Precision, ...] = tuple(Precision(p) for p in DEFAULT_SHARING_PRECISIONS)
    sharing_min_rows: int = 1000  # tables smaller than this are not worth sharing (or tiering)
    tier_layouts: tuple[str, ...] = ()  # tiered tables to consider, e.g. "0.02:fp16/int4" (serve.tiers)
    range_method: str = "l2"

    def __post_init__(self) -> None:
        bad = [p.value for p in self.layer_precisions if p not in Precision.for_layers()]
        if bad:
            raise InputError(f"layers cannot take {bad}")
        if not self.table_precisions or not self.layer_precisions:
            raise InputError("the search space needs at least one table precision and one layer precision")
        if not all(math.isfinite(r) and r > 1 for r in self.sharing_ratios):
            raise InputError(f"sharing ratios must be finite and > 1, got {list(self.sharing_ratios)}")
        for layout in self.tier_layouts:
            parse_layout(layout, "--tier-layouts")

    def has_choices(self) -> bool:
        """Whether the space offers anything but fp32 (a search over nothing returns fp32 silently)."""
        return (any(p is not Precision.FP32 for p in self.table_precisions + self.layer_precisions)
                or bool(self.sharing_ratios) or bool(self.tier_layouts))

    def to_json(self) -> dict[str, Any]:
        return {"table_precisions": [p.value for p in self.table_precisions],
                "layer_precisions": [p.value for p in self.layer_precisions],
                "sharing_ratios": list(self.sharing_ratios),
                "sharing_precisions": [p.value for p in self.sharing_precisions],
                "tier_layouts": list(self.tier_layouts),
                "range_method": self.range_method}


@dataclass(frozen=True)
class Option:
    item: str  # "table:NAME" or "layer:NAME"
    precision: Precision
    sharing: tuple[tuple[str, Any], ...] | None = None  # sorted (key, value) pairs
    bytes: int = field(default=0, compare=False)

    @property
    def kind(self) -> str:
        return self.item.split(":", 1)[0]

    @property
    def name(self) -> str:
        return self.item.split(":", 1)[1]

    @property
    def key(self) -> str:
        share = "" if self.sharing is None else "|" + ",".join(f"{k}={v}" for k, v in self.sharing)
        return f"{self.item}|{self.precision.value}{share}"

    @property
    def is_float_baseline(self) -> bool:
        return self.precision is Precision.FP32 and self.sharing is None

    def sharing_dict(self) -> dict[str, Any] | None:
        return None if self.sharing is None else dict(self.sharing)


def options_for(config: DLRMConfig, space: SearchSpace, sharing: bool = False) -> dict[str, list[Option]]:
    """Every item's options, the fp32 baseline first; post-training sharing options only when
    `sharing` (they need row access counts from calibration)."""
    items: dict[str, list[Option]] = {}
    dim, eligible = config.embedding_dim, {t.name for t in shareable(config, space)}
    layouts = [layout_option(layout) for layout in space.tier_layouts] if sharing else []
    for t in config.tables:
        item = f"table:{t.name}"
        opts = [Option(item, p, None, serving_bytes(t, dim, table_codec(p), None))
                for p in dict.fromkeys((Precision.FP32,) + space.table_precisions)]
        if sharing and t.name in eligible:
            for ratio in space.sharing_ratios:
                for p in space.sharing_precisions:
                    share = (("kind", "hot"), ("ratio", ratio))
                    opts.append(Option(item, p, share, serving_bytes(t, dim, table_codec(p), dict(share))))
            for spec, cold, share in layouts:  # tier boundaries and precisions, priced like any option
                # (not where a tier would be empty: an upper tier's share rounds to 0 rows, or the
                # tiers take every row; either pays an id map for nothing: lowprec.serve.tiers)
                if not TierSpec.from_json(spec, "").leaves_empty(t.num_embeddings):
                    opts.append(Option(item, cold, share, serving_bytes(t, dim, table_codec(cold), spec)))
        items[item] = opts
    for name, shape in config.layer_shapes().items():
        item = f"layer:{name}"
        items[item] = [Option(item, p, None, layer_codec(p).bytes(shape))
                       for p in dict.fromkeys((Precision.FP32,) + space.layer_precisions)]
    return items


def layout_option(layout: str) -> tuple[dict[str, Any], Precision, tuple[tuple[str, Any], ...]]:
    """A tier layout's sharing spec, cold precision and Option.sharing pairs."""
    spec, cold = parse_layout(layout)
    share = (("kind", "tiered"), ("tiers", tuple(tuple(x) for x in spec["tiers"])),
             *((("order", spec["order"]),) if "order" in spec else ()))
    return spec, cold, share


def shareable(config: DLRMConfig, space: SearchSpace) -> list[TableConfig]:
    """The tables post-training sharing and tier layouts are offered on: dense, of >= sharing_min_rows."""
    return [t for t in config.tables if t.embedding == "dense" and t.num_embeddings >= space.sharing_min_rows]


def plan_from_options(chosen: dict[str, Option], range_method: str, info: PlanInfo = PlanInfo()) -> Plan:
    tables = {o.name: TableChoice(o.precision, o.sharing_dict(), range_method)
              for o in chosen.values() if o.kind == "table"}
    layers = {o.name: LayerChoice(o.precision) for o in chosen.values() if o.kind == "layer"}
    return Plan(tables, layers, info)


def total_bytes(chosen: dict[str, Option], kind: str | None = None) -> int:
    return sum(o.bytes for o in chosen.values() if kind is None or o.kind == kind)
