"""What the search says when no plan within the budgets can be returned compressed: a memory budget
no plan of the space fits (refused before measuring), one no validated plan fits (refused after the
rounds, naming the budgets and what was measured), and the note of an all-fp32 plan ("no
compression"). `cfg` is the search's SearchConfig (lowprec.search.run)."""

from __future__ import annotations

from typing import Any

from lowprec.errors import InputError
from lowprec.plan import Budget
from lowprec.search.accept import pct
from lowprec.search.space import Option


def check_memory(items: dict[str, list[Option]], budget: Budget) -> None:
    """Refuse a memory budget no plan of the space fits (0, or below every item at its smallest
    option), before the sensitivity pass rather than after it."""
    if budget.memory_bytes is None:
        return
    smallest = sum(min(o.bytes for o in opts) for opts in items.values())
    if smallest > budget.memory_bytes:
        raise InputError(f"no plan meets the budgets within --memory-budget {budget.memory_bytes:,} bytes "
                         f"([budgets] memory_budget in a recipe): the smallest plan the search space holds "
                         f"(every table and layer at its smallest option) takes {smallest:,} bytes")


def unmet_memory_message(items: dict[str, list[Option]], rounds: list[dict[str, Any]], cfg: Any,
                         exhausted: bool) -> str:
    """Why no plan within the memory budget validated within the accuracy budget (`exhausted`: the
    rounds ran out; else no multiplier holds a plan any more), and what to try. The all-fp32 plan a
    search falls back to does not fit the memory budget either, so this is an error."""
    b, mem = cfg.budget, cfg.budget.memory_bytes
    accuracy = f"the accuracy budget (NE increase <= {pct(b.max_ne_increase)}, AUC drop <= {b.max_auc_drop:g})"
    failed = [r for r in rounds if not r["fits"]]
    closest = ""
    if failed:
        r = _closest(failed)
        closest = (f"{len(failed)} validated plan(s) within it failed {accuracy} on eval windows "
                   f"{list(cfg.eval_windows)} (the closest, round {r['round']}: {_measured(r)})")
    if exhausted:
        why = (f"{closest or 'no plan within it validated'}, and the {cfg.max_rounds} validation rounds "
               f"([search] max_rounds) are spent")
    elif failed:
        why = f"{closest}, and the choices they ruled out leave no plan within it that fits {accuracy}"
    else:
        why = (f"no plan within it fits {accuracy} at any multiplier: a budget of 0 allows only options "
               f"measured as lossless, noise included")
    fp32 = sum(opts[0].bytes for opts in items.values())
    return (f"no plan meets the budgets: within --memory-budget {mem:,} bytes ([budgets] memory_budget in a "
            f"recipe) {why}; the all-fp32 plan a search falls back to takes {fp32:,} bytes. Try a larger "
            f"--memory-budget, --max-ne-increase or --max-auc-drop" + (", or more rounds" if exhausted else ""))


def no_compression_message(rounds: list[dict[str, Any]], cfg: Any) -> str:
    """Why the search returns the all-fp32 plan, and what to try."""
    b = cfg.budget
    failed = [r for r in rounds if not r["fits"]]
    if failed:
        r = _closest(failed)
        how = "upper ends of the 95% intervals" if cfg.accept == "interval" else "point estimates"
        why = (f"none of the {len(failed)} quantized plans validated within the budget (NE increase <= "
               f"{pct(b.max_ne_increase)}, AUC drop <= {b.max_auc_drop:g}; {cfg.accept} rule: {how}) "
               f"on eval windows {list(cfg.eval_windows)}; the closest (round {r['round']}) measured "
               f"{_measured(r)}")
        point_only = sum(1 for r in failed if r.get("verdict", {}).get("point"))
        if cfg.accept == "interval" and point_only:
            why += (f"; {point_only} of them fit on the point estimate only (longer eval windows narrow the "
                    f"interval; --accept point takes the point estimate, at the risk of missing the budget later)")
    else:
        why = "every quantized option's priced loss (measured loss plus its noise) exceeds the budget"
    return (f"no compression: {why}. The plan keeps everything fp32 (1.00x). Try a larger "
            f"--max-ne-increase / --max-auc-drop, a narrower space (e.g. --precisions fp16,int8,int4), "
            f"more rows (--max-rows, longer eval windows) so the noise shrinks, or more validation "
            f"rounds ([search] max_rounds, now {cfg.max_rounds}).")


def _closest(failed: list[dict[str, Any]]) -> dict[str, Any]:
    """The failed validation round that came nearest the NE budget."""
    return min(failed, key=lambda r: r["validated"]["ne_increase"])


def _measured(r: dict[str, Any]) -> str:
    """A validation round's measured loss: NE increase with its interval, AUC drop."""
    v = r["validated"]
    return (f"NE {100 * v['ne_increase']:+.3f}% [CI {100 * v['ne_increase_ci'][0]:+.3f}%, "
            f"{100 * v['ne_increase_ci'][1]:+.3f}%], AUC drop {v['auc_drop']:.5f}")
