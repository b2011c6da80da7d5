"""What the search says when no plan within the budgets can be returned compressed: a memory budget
no plan of the space fits (refused before measuring), one no validated plan fits (refused after the
rounds, naming the budgets and what was measured), and the note of an all-fp32 plan ("no
compression"), and the warnings said before measuring: options asked for that became none, and what
rank-order layouts' timing assumes. `cfg` is the search's SearchConfig (lowprec.search.run)."""

from __future__ import annotations

from typing import Any

from lowprec.errors import InputError, warn
from lowprec.plan import Budget
from lowprec.search.accept import pct
from lowprec.search.space import Option, SearchSpace, layout_option, shareable
from lowprec.serve.tiers import TierSpec, parse_layout


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


def warn_unused_sharing(config: Any, space: SearchSpace, items: dict[str, list[Option]],
                         counted: bool) -> None:
    """Sharing ratios or tier layouts that became no option are said, not dropped silently: all of
    them (no counts, no table to share), or a tier layout that leaves an upper tier empty on every
    table it could apply to (its share rounds to 0 rows there: lowprec.search.space.options_for)."""
    asked = [f for f, v in (("sharing ratios", space.sharing_ratios), ("tier layouts", space.tier_layouts)) if v]
    tables = shareable(config, space)
    if counted and tables:
        offered = {o.sharing for opts in items.values() for o in opts}
        big = max(tables, key=lambda t: t.num_embeddings)
        for layout in space.tier_layouts:
            spec, cold, share = layout_option(layout)
            if share in offered:
                continue
            if TierSpec.from_json(spec, big.name).sizes(big.num_embeddings)[-1] == 0:
                warn(f"tier layout {layout!r} is not considered: its tiers take every row, leaving its cold tier "
                     f"({cold.value}) empty, so it would store its tiers' precisions plus an id map for nothing; "
                     f"leave the cold tier a share (tier shares summing to less than 1)")
            else:
                warn(f"tier layout {layout!r} is not considered: a tier's share rounds to 0 rows on every table "
                     f"it could apply to (the largest, {big.name!r}, has {big.num_embeddings:,} rows), so it would "
                     f"store the plain cold precision plus a rank directory for nothing; give each tier a share "
                     f"of at least 1/{big.num_embeddings:,}")
        return
    if not asked or any(o.sharing is not None for opts in items.values() for o in opts):
        return
    why = ("there are no row access counts from calibration" if not counted else
           f"no table is a dense table of >= {space.sharing_min_rows:,} rows")
    warn(f"the {' and '.join(asked)} requested are not considered: {why}")


def warn_ranked_timing(cfg: Any) -> None:
    """Rank-order tier layouts are timed on ranks (lowprec.search.latency): say what that assumes."""
    ranked = [t for t in cfg.space.tier_layouts if parse_layout(t, "--tier-layouts")[0].get("order") == "rank"]
    if cfg.objective == "latency" and ranked:
        warn(f"tier layouts {', '.join(ranked)} are timed on ranked ids, as a feature pipeline that renumbers "
             f"ids through the artifact's rank map sends them; served raw ids they also pay the rank map "
             f"(reports/tiered.md). If yours sends raw ids, offer id-order layouts (without '/rank') instead")
