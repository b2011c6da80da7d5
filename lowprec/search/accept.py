"""When the search accepts a validated plan: the acceptance rules and their verdicts.

A validation (lowprec.search.validate) measures the plan against the float model on the same rows:
the relative NE increase with a paired Poisson-bootstrap interval, the AUC drop with DeLong's paired
normal interval, both two-sided at `CONFIDENCE` (95%). Two rules decide whether it fits the budget:

- ``interval`` (the default): the upper ends of both intervals are within the budget, i.e. NE increase
  and AUC drop are each below the budget at one-sided 97.5% confidence. Slack the search spends under
  this rule is slack the validation rows can vouch for.
- ``point``: the point estimates are within the budget (the rule before issue #14: the tight plans that
  then missed their budget on the test window had been accepted this way, their intervals over it).

A verdict records both checks, the rule that decided and, in words, why: the round log and the
search report print it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from lowprec.errors import InputError
from lowprec.plan import Budget, Validation

CONFIDENCE = 0.95  # two-sided level of both validation intervals (PairedConfig's bootstrap uses the same)
ACCEPT_RULES = ("interval", "point")
DEFAULT_RULE = "interval"


def check_rule(rule: str, where: str = "--accept") -> str:
    if rule not in ACCEPT_RULES:
        raise InputError(f"{where} must be one of {', '.join(ACCEPT_RULES)}, not {rule!r}")
    return rule


@dataclass(frozen=True)
class Verdict:
    rule: str
    point: bool  # the point estimates fit the budget
    interval: bool  # the intervals' upper ends fit the budget
    reason: str

    @property
    def accepted(self) -> bool:
        return self.interval if self.rule == "interval" else self.point

    def to_json(self) -> dict[str, Any]:
        return {"rule": self.rule, "accepted": self.accepted, "point": self.point, "interval": self.interval,
                "reason": self.reason}


def pct(x: float) -> str:
    """A relative NE change as a signed percentage, 3 decimals (-0 as +0; a huge budget in
    exponent form rather than hundreds of digits)."""
    x = 100 * float(x) + 0.0
    return f"{x:+.3f}%" if abs(x) < 1e6 else f"{x:+.3g}%"


def judge(v: Validation, budget: Budget, rule: str = DEFAULT_RULE) -> Verdict:
    """Both checks of `v` against `budget`, decided by `rule`, with the numbers that decided it."""
    check_rule(rule)
    ne_b, auc_b = budget.max_ne_increase, budget.max_auc_drop
    point = v.fits(ne_b, auc_b)
    interval = bool(v.ne_increase_ci[1] <= ne_b and v.auc_drop_ci[1] <= auc_b)
    if rule == "interval":
        ne, auc, what = v.ne_increase_ci[1], v.auc_drop_ci[1], f"{100 * CONFIDENCE:g}% upper bound"
    else:
        ne, auc, what = v.ne_increase, v.auc_drop, "point estimate"
    parts = [f"NE increase {what} {pct(ne)} {'<=' if ne <= ne_b else '>'} {pct(ne_b)}",
             f"AUC drop {what} {auc:.5f} {'<=' if auc <= auc_b else '>'} {auc_b:g}"]
    tail = ""
    if rule == "interval" and point and not interval:
        tail = " (the point estimates fit: the rows cannot vouch for it)"
    elif rule == "point" and point and not interval:
        tail = " (the interval does not fit: accepted on the point estimate alone)"
    head = "accepted" if Verdict(rule, point, interval, "").accepted else "rejected"
    return Verdict(rule, point, interval, f"{head} by the {rule} rule: {'; '.join(parts)}{tail}")


def fits_summary(v: Validation | None, budget: Budget) -> dict[str, bool] | None:
    """{point, interval}: does the budget hold for the point estimate, and for the whole interval?"""
    if v is None:
        return None
    verdict = judge(v, budget)
    return {"point": verdict.point, "interval": verdict.interval}
