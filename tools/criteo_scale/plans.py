"""Hand-written plans of the Criteo-scale study: post-training hot sharing and single-rule heuristics.

A heuristic is one rule for every model: tables with more than `min_rows` rows get post-training hot
sharing at `ratio` (hot rows kept exact, the rest hashed into buckets; lowprec/serve/sharing.py) and
`precision`, every other table `precision`. Plans are written in lowprec's plan format (lowprec/plan.py)
so `lowprec convert --plan` reads them like a searched plan.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

FORMAT = {"format": "lowprec-plan", "version": 1}


@dataclass(frozen=True)
class Rule:
    """Hot sharing `ratio` (None: none) on tables over `min_rows` rows; `precision` everywhere."""

    precision: str
    ratio: int | None
    range_method: str = "minmax"
    min_rows: int = 50_000

    @property
    def name(self) -> str:
        share = f"hot{self.ratio}x>{self.min_rows // 1000}k+" if self.ratio else ""
        return f"{share}{self.precision}" + ("-l2" if self.range_method == "l2" else "")

    def plan(self, tables: dict[str, int]) -> dict:
        rules: dict[str, dict] = {}
        if self.ratio:
            for name, rows in tables.items():
                if rows > self.min_rows:
                    rules[name] = {"precision": self.precision, "range_method": self.range_method,
                                   "sharing": {"kind": "hot", "ratio": self.ratio}}
        rules["*"] = {"precision": self.precision, "range_method": self.range_method, "sharing": None}
        return {**FORMAT, "tables": rules, "layers": {}, "kind": f"heuristic {self.name}"}

    def write(self, tables: dict[str, int], path: Path) -> Path:
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(self.plan(tables), indent=1))
        return path


# Candidates for "the best single-rule heuristic": chosen on the search-validation window, never the test.
# (Three candidates, not a grid: each costs a full-scale conversion on a shared 2-core machine.)
HEURISTICS = (Rule("int4", 16), Rule("int4", 64), Rule("int2", 16, "l2"))
# Post-training hot sharing alone (fp32 rows) on the large tables.
HOT_ONLY = (Rule("fp32", 16),)
