"""The precision plan: one serialisable object that search writes and convert reads.

    {"format": "lowprec-plan", "version": 1,
     "tables": {"cat_3": {"precision": "int4", "sharing": null}, "cat_*": {"precision": "int8"},
                "*": {"precision": "fp16"}},
     "layers": {"top.2": {"precision": "fp32"}, "*": {"precision": "int8"}},
     "budgets": {...}, "predicted": {...}, "validated": {...}, "total_bytes": ..., "notes": ...}

Everything beside the rules is `PlanInfo` (typed; unknown keys are refused): what kind of plan it is,
the budgets it was searched under, the loss the solver predicted, what validation measured
(`Validation`), its bytes, windows and objective.

Resolution for a name: the exact key, else the first glob pattern (fnmatch, in file order) that
matches, else "*", else fp32 (as torchao's FqnToConfig and TorchRec's per-table dtypes do). A plan
naming a table or layer the model lacks, or a pattern that matches none of its tables (layers), is an
error naming the plan file; so is a precision a layer cannot take, a rule without a precision, and a
version other than the integer 1. Tables no rule covers (and layers, when the plan has layer rules)
are converted at fp32 with a warning naming them.
"""

from __future__ import annotations

import fnmatch
import json
from dataclasses import MISSING, asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from lowprec.errors import InputError, warn
from lowprec.fileio import read_json
from lowprec.precision import Precision

FORMAT = "lowprec-plan"
FORMAT_VERSION = 1
RANGE_METHODS = ("minmax", "l2")


@dataclass(frozen=True)
class TableChoice:
    precision: Precision = Precision.FP32
    sharing: dict[str, Any] | None = None  # e.g. {"kind": "hot", "ratio": 8}; see model.sharing
    range_method: str = "minmax"  # row range for integer precisions: min/max or L2-optimal

    def __post_init__(self) -> None:
        if self.range_method not in RANGE_METHODS:
            raise InputError(f"range_method {self.range_method!r} is not one of {RANGE_METHODS}")

    def to_json(self) -> dict[str, Any]:
        return {"precision": self.precision.value, "sharing": self.sharing, "range_method": self.range_method}


@dataclass(frozen=True)
class LayerChoice:
    precision: Precision = Precision.FP32

    def __post_init__(self) -> None:
        if self.precision not in Precision.for_layers():
            raise InputError(f"layers take {[p.value for p in Precision.for_layers()]}, "
                             f"not {self.precision.value}")

    def to_json(self) -> dict[str, Any]:
        return {"precision": self.precision.value}


@dataclass(frozen=True)
class Budget:
    """The accuracy and memory budget a plan is searched under (the solver's constraint)."""

    max_ne_increase: float  # relative, e.g. 0.001 for 0.1%
    max_auc_drop: float
    memory_bytes: int | None = None


@dataclass(frozen=True)
class Predicted:
    """The loss the solver budgeted for: each chosen option's measured loss, summed."""

    d_ne: float
    d_auc: float


@dataclass(frozen=True)
class Validation:
    """The plan's converted artifact against the float model on held-out windows (paired)."""

    ne_increase: float  # relative
    ne_increase_ci: tuple[float, float]
    auc_drop: float
    auc_drop_ci: tuple[float, float]
    float_ne: float
    float_auc: float
    plan_ne: float
    plan_auc: float
    embedding_bytes: int
    layer_bytes: int
    rows: int
    calibration_gap: float = 0.0  # Σp_plan / Σp_float - 1 on the same rows (0 in plans from before it)
    positives: int | None = None  # label counts of those rows (None in plans from before them)
    negatives: int | None = None

    def fits(self, max_ne_increase: float, max_auc_drop: float) -> bool:
        return self.ne_increase <= max_ne_increase and self.auc_drop <= max_auc_drop

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class SearchWindows:
    calibration: tuple[int, ...]
    evaluation: tuple[int, ...]
    test: tuple[int, ...] = ()  # never used to select the plan


@dataclass(frozen=True)
class PlanInfo:
    kind: str | None = None  # "uniform int4", "search", ...
    budgets: Budget | None = None
    predicted: Predicted | None = None
    validated: Validation | None = None
    tested: Validation | None = None  # the chosen plan on the test windows
    total_bytes: int | None = None
    table_bytes: int | None = None
    layer_bytes: int | None = None
    windows: SearchWindows | None = None
    objective: str | None = None
    accept: str | None = None  # the search's acceptance rule: "interval" or "point" (lowprec.search.accept)
    predicted_latency_us: float | None = None
    # latency objective: the plan and the uniform plans it was checked against, timed whole
    # (median us a model call on the calibration batches; lowprec.search.latency.time_plans)
    measured_latency_us: dict[str, float] | None = None
    # and each uniform plan's speed over the searched one, the median of the paired per-repeat ratios
    # (what WHOLE_MARGIN is applied to: a plan >= 1.03 that validates replaces the searched one)
    whole_speedup: dict[str, float] | None = None
    evaluations: int | None = None
    rounds: int | None = None
    notes: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {f.name: _plain(getattr(self, f.name)) for f in fields(self) if getattr(self, f.name) is not None}

    @classmethod
    def from_json(cls, obj: dict[str, Any], where: str) -> "PlanInfo":
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(obj) - known)
        if unknown:
            raise InputError(f"{where}: unknown plan keys {unknown} (known: {sorted(known)})")
        parts = {"budgets": Budget, "predicted": Predicted, "validated": Validation, "tested": Validation,
                 "windows": SearchWindows}
        try:
            values = {k: _typed(parts[k], v) if k in parts and v is not None else v for k, v in obj.items()}
            return cls(**values)
        except (TypeError, ValueError) as exc:
            raise InputError(f"{where}: malformed plan information ({exc})") from None


def _plain(value: Any) -> Any:
    return asdict(value) if hasattr(value, "__dataclass_fields__") else value


def _typed(kind: type, value: Any) -> Any:
    if not isinstance(value, dict):
        raise TypeError(f"{kind.__name__} must be an object, got {type(value).__name__}")
    out = {}
    for f in fields(kind):
        if f.name not in value and f.default is MISSING:
            raise TypeError(f"{kind.__name__} needs {f.name!r}")
        v = value.get(f.name, f.default)
        out[f.name] = tuple(v) if isinstance(v, list) else v
    unknown = set(value) - {f.name for f in fields(kind)}
    if unknown:
        raise TypeError(f"{kind.__name__} has no fields {sorted(unknown)}")
    return kind(**out)


def _is_pattern(key: str) -> bool:
    return key != "*" and any(c in key for c in "*?[")


def _resolve(rules: dict[str, Any], name: str, default: Any) -> Any:
    if name in rules:
        return rules[name]
    for key, value in rules.items():
        if _is_pattern(key) and fnmatch.fnmatchcase(name, key):
            return value
    return rules.get("*", default)


@dataclass(frozen=True)
class Plan:
    tables: dict[str, TableChoice] = field(default_factory=dict)
    layers: dict[str, LayerChoice] = field(default_factory=dict)
    info: PlanInfo = field(default_factory=PlanInfo)
    source: str = field(default="plan", compare=False)  # the plan file (or what it came from), for errors

    def table(self, name: str) -> TableChoice:
        return _resolve(self.tables, name, TableChoice())

    def layer(self, name: str) -> LayerChoice:
        return _resolve(self.layers, name, LayerChoice())

    @classmethod
    def uniform(cls, table_precision: Precision, layer_precision: Precision | None = None,
                range_method: str = "minmax") -> "Plan":
        layers = {"*": LayerChoice(layer_precision)} if layer_precision else {}
        return cls({"*": TableChoice(table_precision, None, range_method)}, layers,
                   PlanInfo(kind=f"uniform {table_precision.value}"))

    def check_against(self, table_names: list[str], layer_names: list[str], where: str | None = None) -> None:
        """Every rule applies to something: an exact name the model lacks, or a pattern that matches
        none of its names, is refused (a typo would otherwise leave its tables at fp32 silently).
        Tables no rule covers (layers, when there are layer rules) are converted at fp32: warned."""
        where = where or self.source
        for kind, rules, names in (("table", self.tables, table_names), ("layer", self.layers, layer_names)):
            exact = [k for k in rules if k != "*" and not _is_pattern(k)]
            missing = [k for k in exact if k not in names]
            if missing:
                raise InputError(f"{where}: plan names {kind}(s) the model lacks: {missing} "
                                 f"(model {kind}s: {names[:30]})")
            idle = [k for k in rules if _is_pattern(k) and not any(fnmatch.fnmatchcase(n, k) for n in names)]
            if idle:
                raise InputError(f"{where}: plan {kind} pattern(s) {idle} match no {kind} of the model "
                                 f"(model {kind}s: {names[:30]})")
            uncovered = [n for n in names if _resolve(rules, n, None) is None]
            if uncovered and (kind == "table" or rules):
                warn(f"{where}: no rule of the plan covers {kind}(s) {uncovered[:30]}"
                     f"{' ...' if len(uncovered) > 30 else ''}: they are converted at fp32 "
                     f"(add them, or a \"*\" rule, to the plan's `{kind}s` to choose their precision)")

    def to_json(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "version": FORMAT_VERSION,
            "tables": {k: v.to_json() for k, v in self.tables.items()},
            "layers": {k: v.to_json() for k, v in self.layers.items()},
            **self.info.to_json(),
        }

    @classmethod
    def from_json(cls, obj: dict[str, Any], where: str = "plan", tier_order: bool = True) -> "Plan":
        """A plan file's plan, checked; `tier_order` False: a deployed artifact's plan, whose tier layouts
        are kept as they were converted (lowprec.serve.tiers.check_tier_order judges new plans only)."""
        if not isinstance(obj, dict) or obj.get("format") != FORMAT:
            raise InputError(f"{where}: not a lowprec plan (format {obj.get('format') if isinstance(obj, dict) else None!r})")
        version = obj.get("version")
        if type(version) is not int or version != FORMAT_VERSION:  # (true and 1.0 equal 1 in Python)
            raise InputError(f"{where}: plan version {version!r} is not supported (expected the integer "
                             f"{FORMAT_VERSION})")
        for key, example in (("tables", '{"*": {"precision": "int4"}}'), ("layers", '{"*": {"precision": "int8"}}')):
            if not isinstance(obj.get(key, {}), dict):
                raise InputError(f"{where}: `{key}` must be an object of name or pattern -> choice, such as "
                                 f"{example}, not {json.dumps(obj[key])[:60]}")
        tables = {k: _table_choice(v, where, k, tier_order) for k, v in obj.get("tables", {}).items()}
        layers = {k: _layer_choice(v, where, k) for k, v in obj.get("layers", {}).items()}
        rest = {k: v for k, v in obj.items() if k not in ("format", "version", "tables", "layers")}
        return cls(tables, layers, PlanInfo.from_json(rest, where), where)

    @classmethod
    def load(cls, path: str | Path) -> "Plan":
        return cls.from_json(read_json(path, "plan"), str(path))


def _table_choice(v: dict[str, Any], where: str, table: str, tier_order: bool = True) -> TableChoice:
    """One table rule of a plan file; every error names the file and the table once."""
    at = f"{where}: table {table!r}"
    if not isinstance(v, dict):
        raise InputError(f"{at}: must be an object such as {{\"precision\": \"int4\"}}, not {v!r}")
    unknown = set(v) - {"precision", "sharing", "range_method"}
    if unknown:
        raise InputError(f"{at}: unknown keys {sorted(unknown)}")
    sharing = v.get("sharing")
    if sharing is not None and not (isinstance(sharing, dict) and "kind" in sharing):
        from lowprec.serve.sharing import POST_TRAINING

        raise InputError(f"{at}: sharing must be null or an object such as {{\"kind\": \"hot\", \"ratio\": 8}} "
                         f"(kinds: {', '.join(POST_TRAINING)}; docs/errors.md), not {sharing!r}")
    precision = Precision.parse(v.get("precision", "fp32"), at)
    try:
        if sharing is not None:
            _check_sharing(sharing, table, precision if tier_order else None)
        choice = TableChoice(precision, sharing, v.get("range_method", "minmax"))
    except InputError as exc:
        text = str(exc)
        raise InputError(f"{where}: {text}" if text.startswith(f"table {table!r}: ") else f"{at}: {text}") from None
    _need_precision(v, at)
    return choice


def _need_precision(rule: dict[str, Any], at: str) -> None:
    """A rule covers its tables (or layers), so one without a precision chose fp32 in silence (and the
    uncovered-table warning did not fire): refused."""
    if "precision" not in rule:
        raise InputError(f"{at}: the rule gives no precision; add one, e.g. {{\"precision\": \"int4\"}} "
                         f"(\"fp32\" to keep it float)")


def _check_sharing(spec: dict[str, Any], table: str, precision: Precision | None) -> None:
    """A table's post-training sharing as far as the plan alone decides it: a kind convert knows,
    with options it takes (errors "table 'NAME': ..."). What needs the model or the calibration (a
    dense table, row access counts) is checked when converting."""
    from lowprec.serve.sharing import POST_TRAINING, hot_options
    from lowprec.serve.tiers import TierSpec, check_tier_order

    kind = spec.get("kind")
    if kind not in POST_TRAINING:
        raise InputError(f"table {table!r}: unknown sharing kind {kind!r} (known: {list(POST_TRAINING)})")
    if kind == "hot":
        hot_options(spec, table)
    else:  # (the plan's table precision is the cold tier's; None: a deployed plan, not judged again)
        tiers = TierSpec.from_json(spec, table)
        if precision is not None:
            check_tier_order([p for _, p in tiers.tiers], precision, f"table {table!r}")


def _layer_choice(v: dict[str, Any], where: str, layer: str) -> LayerChoice:
    at = f"{where}: layer {layer!r}"
    if not isinstance(v, dict):
        raise InputError(f"{at}: must be an object such as {{\"precision\": \"int8\"}}, not {v!r}")
    unknown = set(v) - {"precision"}
    if unknown:
        raise InputError(f"{at}: unknown keys {sorted(unknown)}")
    precision = Precision.parse(v.get("precision", "fp32"), at)
    try:
        choice = LayerChoice(precision)
    except InputError as exc:
        raise InputError(f"{at}: {exc}") from None
    _need_precision(v, at)
    return choice
