"""Option forms on the looked-up rows only: what the sensitivity emulator quantizes and serves.

The emulator (lowprec.search.sensitivity) scores a table option on the cached calibration batches,
which look up a small sorted set U of the table's ids ("touched"). Quantization encodes row by row
(a row's range depends on that row and its access count only), so a form holding only the physical
rows those lookups reach, each with the value the whole-table build gives it, pools exactly what the
whole-table form pools. `SubsetForms.subset` builds that form for
- a dense table at a precision: the rows U, with their access counts (L2 ranges read them);
- post-training hot sharing (lowprec.serve.sharing.Hot): the hot ids in U keep their rows; a cold
  id in U reads its bucket's mean, computed for the buckets U reaches only, over the same members
  in the same (ascending id) order and by the same function (`bucket_means`) as the whole-table
  build, so the values are bit-identical;
- a tiered table (lowprec.serve.tiers): a tiered form over the positions in U, each position in the
  tier the whole table's ranking puts its id in.
Costs: per table, the rows are ranked by access count once and (hot sharing) every id is hashed
once per seed; per (table, sharing) one pass over the table's ids (not its rows) and a gather of the
rows the form needs; the float form is then shared by every precision of that sharing. The
whole-table build it replaces ran the sharing over every row and quantized every row, per option.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Any

import torch

from lowprec.quant.hashing import ROW, hash_ids, table_id
from lowprec.quant.range_search import auto_backend
from lowprec.serve.forms import ServingForm, dense_form
from lowprec.serve.sharing import bucket_means, check_counts, hot_options, hot_split
from lowprec.serve.tables import padded_dim
from lowprec.serve.tiers import COLD, TierSpec, tiered_form

HASH_CHUNK = 1 << 20  # ids hashed at a time (the limb arithmetic holds ~10 temporaries per id)


@dataclass
class Subset:
    """A table option's form over the looked-up rows: what `quantize_form` reads (`form`, `counts`)
    and how the lookups address it (`rows`: position in U -> physical row; None: the position).
    `whole`: per physical table, how many values the whole-table build range-searches in one call."""

    form: ServingForm
    counts: torch.Tensor | None
    rows: torch.Tensor | None
    whole: dict[str, int]

    def backends(self) -> dict[str, str]:
        """Per physical table, the L2 range-search backend the whole-table build runs
        (lowprec.quant.range_search.auto_backend: the C kernel, which searches each row alone, else by
        the values searched at once). Backends differ on near-tie rows, so the subset's rows take the
        whole build's backend, not the one their own size would pick."""
        return {k: auto_backend(n) for k, n in self.whole.items()}


class _Ranked:
    """One table's rows by access count, descending, ties by lower id (the serving handlers' rule:
    a stable sort), with what the options of this table derive from it."""

    def __init__(self, counts: torch.Tensor, touched: torch.Tensor):
        self.counts, self.touched = counts, touched
        self.order = torch.sort(counts, descending=True, stable=True).indices
        self._rank_u: torch.Tensor | None = None
        self._hashes: dict[tuple[int, int], torch.Tensor] = {}

    def touched_ranks(self) -> torch.Tensor:
        """Each touched id's position in `order`."""
        if self._rank_u is None:
            rank = torch.empty_like(self.order)
            rank[self.order] = torch.arange(len(self.order))
            self._rank_u = rank[self.touched]
        return self._rank_u

    def hashes(self, tid: int, seed: int) -> torch.Tensor:
        """h(table, id) mod p for every id (bucket = h mod B, as `hash_rows` computes it)."""
        if (tid, seed) not in self._hashes:
            n = len(self.counts)
            out = torch.empty(n, dtype=torch.int64)
            for start in range(0, n, HASH_CHUNK):
                ids = torch.arange(start, min(n, start + HASH_CHUNK), dtype=torch.int64)
                out[start:start + len(ids)] = hash_ids(ids, tid, 0, seed, ROW)
            self._hashes = {(tid, seed): out}  # one seed at a time (options share the default)
        return self._hashes[(tid, seed)]


class SubsetForms:
    """Subset forms of one model's dense tables; float forms cached per (table, sharing)."""

    def __init__(self) -> None:
        self._ranked: tuple[int, _Ranked] | None = None  # the last table ranked (options come per table)
        self._forms: dict[tuple[int, Any], Subset] = {}

    def subset(self, t: int, name: str, form: ServingForm, sharing: dict[str, Any] | None,
               counts: Any, touched: torch.Tensor) -> Subset | None:
        """Table `t`'s option (trained `form`, post-training `sharing`) on the `touched` ids; None
        where it has no subset form (a trained shared table, an unknown kind, nothing looked up)."""
        if not form.rows_are_ids or len(touched) == 0:
            return None
        kind = None if sharing is None else sharing.get("kind")
        if kind not in (None, "hot", "tiered"):
            return None
        cache_key = (t, repr(sorted(sharing.items())) if sharing else None)
        if cache_key not in self._forms:
            key = next(iter(form.tables))
            weight = form.tables[key]
            if kind is None:
                sub = self._dense(key, weight, counts, touched)
            else:
                what = "hot sharing needs" if kind == "hot" else "tiered tables need"
                ranked = self._rank(t, check_counts(counts, weight.shape[0], name, what), touched)
                build = self._hot if kind == "hot" else self._tiered
                sub = build(key, weight, sharing, name, ranked)
            self._forms = {k: v for k, v in self._forms.items() if k[0] == t}  # keep one table's
            self._forms[cache_key] = sub
        return self._forms[cache_key]

    def _rank(self, t: int, counts: torch.Tensor, touched: torch.Tensor) -> _Ranked:
        if self._ranked is None or self._ranked[0] != t:
            self._ranked = None  # free the last table's ranking before building this one
            self._ranked = (t, _Ranked(counts, touched))
        return self._ranked[1]

    @staticmethod
    def _dense(key: str, weight: torch.Tensor, counts: Any, touched: torch.Tensor) -> Subset:
        """The rows U themselves, with their access counts (where the rows are the ids)."""
        n, dim = weight.shape
        counts = torch.as_tensor(counts) if counts is not None else None
        active = n if counts is None else int((counts > 0).sum())  # L2 searches rows with counts > 0
        sub = counts[touched] if counts is not None else None
        return Subset(dense_form(key, weight.index_select(0, touched)), sub, None, {key: active * padded_dim(dim)})

    def _hot(self, key: str, weight: torch.Tensor, spec: dict[str, Any], name: str,
             ranked: _Ranked) -> Subset:
        """Hot rows of U as they are, then the means of the buckets U's cold ids fall in (see
        lowprec.serve.sharing.Hot.share: the same split, ranking, hash and means)."""
        ratio, hot, _, seed = hot_options(spec, name)
        u, n = ranked.touched, weight.shape[0]
        k, b = hot_split(n, ratio, hot)
        if b == 0:  # nothing shared: the whole-table build returns the dense form
            return self._dense(key, weight, ranked.counts, u)  # L2 reads only which counts are 0
        is_hot = torch.zeros(n, dtype=torch.bool)
        is_hot[ranked.order[:k]] = True
        hot_u = is_hot[u]
        h = ranked.hashes(table_id(name), seed)
        cold = torch.nonzero(~is_hot).squeeze(1)  # ascending: the whole-table build's member order
        bucket = torch.remainder(h[cold], b)
        bucket_u = torch.remainder(h[u[~hot_u]], b)
        needed = torch.unique(bucket_u)  # sorted
        reached = torch.zeros(b, dtype=torch.bool)
        reached[needed] = True
        keep = reached[bucket]
        means = bucket_means(weight, cold[keep], torch.searchsorted(needed, bucket[keep]),
                              ranked.counts, len(needed))
        table = torch.cat([weight[u[hot_u]], means.to(weight.dtype)])
        n_hot = int(hot_u.sum())
        rows = torch.empty(len(u), dtype=torch.int64)
        rows[hot_u] = torch.arange(n_hot)
        rows[~hot_u] = n_hot + torch.searchsorted(needed, bucket_u)
        # the whole-table form is not rows-are-ids, so quantization reads no counts there either
        return Subset(dense_form(key, table), None, rows, {key: (k + b) * padded_dim(weight.shape[1])})

    @staticmethod
    def _tiered(key: str, weight: torch.Tensor, spec: dict[str, Any], name: str,
                ranked: _Ranked) -> Subset:
        """A tiered form over positions in U: position i in the tier id U[i] ranks into."""
        tiers = TierSpec.from_json(spec, name)
        ends = torch.tensor(list(itertools.accumulate(tiers.sizes(weight.shape[0]))), dtype=torch.int64)
        tier_u = torch.searchsorted(ends, ranked.touched_ranks(), right=True)
        parts = [torch.nonzero(tier_u == j).squeeze(1) for j in range(len(tiers.tiers) + 1)]
        rows_u = dense_form(key, weight.index_select(0, ranked.touched))
        sizes, pdim = tiers.sizes(weight.shape[0]), padded_dim(weight.shape[1])
        whole = {f"{key}.tier{j}": m * pdim for j, m in enumerate(sizes[:-1])} | {f"{key}.{COLD}": sizes[-1] * pdim}
        return Subset(tiered_form(rows_u, spec, None, name, parts), None, None, whole)
