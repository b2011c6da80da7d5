"""The serving wiring of an artifact's manifest: every row the TBE is asked for exists.

FBGEMM's inference TBE runs without its own bounds check (lowprec.serve.runtime: the logical ids are
checked before any id transform), so a transform whose output can pass its physical table's end, or
a physical table no feature reads, reaches the kernel as an assertion or an out-of-bounds read
(exit 4, or wrong numbers). These checks refuse such a manifest first (exit 2, naming the manifest
and the feature):

- `check_wiring` (manifest only, O(features)): every physical table is read by some feature, every
  feature belongs to exactly one serving group, a group's features are as wide as the table's
  (padded) dim, a tier feature sits alone in its group and a table's tiers are distinct tiers of one
  layout; and each transform's largest output fits its physical table's rows:
  identity n, hash/robe `rows`, qr_q ceil(n / c), qr_r c, hot_hash `hot + buckets`, a rank-order
  tier `bounds[j + 1] - bounds[j]` (with `bounds[-1]` = n);
- `check_buffers` (the transforms' buffers, cheap tensor passes, never the tables): a remap's values
  lie in its table; a rank map is a permutation of [0, n); a hot-sharing table's hot ids are
  distinct, ascending and in [0, n); an id-order tier's rank directories are ceil(n / block)
  words whose counts are their members' running totals, disjoint, with tier j holding exactly its
  table's rows and the cold tier the rest.
"""

from __future__ import annotations

from typing import Any

import torch

from lowprec.errors import InputError
from lowprec.jsonsafe import is_int
from lowprec.model.config import DLRMConfig
from lowprec.serve.tables import padded_dim
from lowprec.serve.transforms import popcount32


def _fail(where: str, i: int, msg: str) -> InputError:
    return InputError(f"{where}: feature {i}: {msg}")


def _owners(manifest: dict[str, Any], where: str) -> dict[int, int]:
    """Feature index -> its serving table's index; each feature in exactly one group."""
    owner: dict[int, int] = {}
    for t, s in enumerate(manifest["serving"]):
        for g in s["groups"]:
            for i in g:
                if i in owner:
                    raise _fail(where, i, f"is listed twice in `serving` (tables {manifest['serving'][owner[i]]['name']!r}"
                                          f" and {s['name']!r}); each feature serves one group of one table")
                owner[i] = t
    unused = [i for i in range(len(manifest["features"])) if i not in owner]
    if unused:
        raise _fail(where, unused[0], "is in no serving group (a feature the TBE holds but no table reads)")
    return owner


def _out_rows(spec: dict[str, Any], n: int, i: int, where: str) -> int | None:
    """The rows a transform can address (its largest output + 1) for ids in [0, n); None: by its buffer."""
    kind = spec.get("kind")

    def num(key: str, low: int = 1) -> int:
        v = spec.get(key)
        if not is_int(v) or v < low:
            raise _fail(where, i, f"id transform {kind!r} needs an integer {key} >= {low}, got {v!r}")
        return v
    if kind == "identity":
        return n
    if kind in ("hash", "robe"):
        return num("rows")
    if kind == "qr_q":
        return -(-n // num("c"))
    if kind == "qr_r":
        return min(n, num("c"))
    if kind == "hot_hash":
        return num("hot") + num("buckets")
    if kind == "tier" and "rank" in spec:
        bounds, j = spec.get("bounds"), spec.get("tier")
        if not (isinstance(bounds, list) and len(bounds) >= 2 and all(is_int(b) for b in bounds)
                and bounds[0] == 0 and bounds == sorted(bounds) and bounds[-1] == n
                and is_int(j) and 0 <= j < len(bounds) - 1):
            raise _fail(where, i, f"tier {j!r} with bounds {bounds!r} is not a tier of ascending bounds "
                                  f"[0, ..., {n}] over the table's {n} rows")
        return bounds[j + 1] - bounds[j]
    return None  # remap, id-order tier: by their buffers (check_buffers)


def _tier_layout(spec: dict[str, Any]) -> Any:
    return (spec.get("rank"), spec.get("bounds")) if "rank" in spec else (spec.get("buffers"), spec.get("block", 16))


def check_wiring(manifest: dict[str, Any], config: DLRMConfig, where: str) -> None:
    """The manifest-only checks of the module docstring (run by validate_manifest)."""
    physical = {t["key"]: t for t in manifest["physical_tables"]}
    features = manifest["features"]
    owner = _owners(manifest, where)
    unread = [k for k in physical if k not in {f["table"] for f in features}]
    if unread:
        raise InputError(f"{where}: physical table {unread[0]!r} is read by no feature (every TBE table "
                         f"needs one); was manifest.json edited? Re-run `lowprec convert`")
    width = padded_dim(config.embedding_dim)
    for t, s in enumerate(manifest["serving"]):
        tiers = [features[i]["transform"] for g in s["groups"] for i in g if features[i]["transform"].get("kind") == "tier"]
        for g in s["groups"]:
            got = sum(physical[features[i]["table"]]["dim"] for i in g)
            if got != width:
                dims = ", ".join(f"physical table {features[i]['table']!r} of dim {physical[features[i]['table']]['dim']}"
                                 for i in g)
                raise _fail(where, g[0], f"its group of table {s['name']!r} is {got} wide ({dims}), the table's "
                                         f"rows {width}")
            if len(g) > 1 and any(features[i]["transform"].get("kind") == "tier" for i in g):
                raise _fail(where, g[0], f"a tier of table {s['name']!r} shares a group with other features; "
                                         f"each tier is its own group (the groups are summed)")
        if tiers and (len({repr(_tier_layout(x)) for x in tiers}) > 1
                      or len({repr(x.get("tier")) for x in tiers}) != len(tiers)):
            raise InputError(f"{where}: table {s['name']!r}: its tier features are not distinct tiers of one "
                             f"layout (tiers {[x.get('tier') for x in tiers]})")
    for i, f in enumerate(features):
        n = config.tables[owner[i]].num_embeddings
        rows = physical[f["table"]]["rows"]
        out = _out_rows(f["transform"], n, i, where)
        if out is not None and out > rows:
            raise _fail(where, i, f"id transform {f['transform'].get('kind')!r} of table "
                                  f"{config.tables[owner[i]].name!r} addresses {out} rows, its physical table "
                                  f"{f['table']!r} holds {rows}")


def _directory_members(d: torch.Tensor, n: int, block: int, i: int, where: str, name: str) -> torch.Tensor:
    """The member mask words of a checked rank directory (counts = running totals of the members)."""
    if d.numel() != -(-n // block):
        raise _fail(where, i, f"tier directory {name!r} holds {d.numel()} words, a table of {n} rows "
                              f"needs {-(-n // block)} of {block} ids")
    d = d.to(torch.int64)
    words, cum = d & ((1 << block) - 1), d >> block
    counts = popcount32(words)
    if d.numel() and not (int(cum[0]) == 0 and torch.equal(cum[1:], torch.cumsum(counts, 0)[:-1])):
        raise _fail(where, i, f"tier directory {name!r}: its counts are not the running totals of its members")
    return words


def check_buffers(manifest: dict[str, Any], config: DLRMConfig, buffers: dict[str, torch.Tensor],
                  where: str) -> None:
    """The buffer checks of the module docstring (run by every loader on the buffers it reads)."""
    physical = {t["key"]: t["rows"] for t in manifest["physical_tables"]}
    owner = _owners(manifest, where)
    checked: set[str] = set()
    for i, f in enumerate(manifest["features"]):
        spec, rows = f["transform"], physical[f["table"]]
        n = config.tables[owner[i]].num_embeddings
        kind = spec.get("kind")
        if kind == "remap" and isinstance(buffers.get(spec.get("buffer")), torch.Tensor):
            buf = buffers[spec["buffer"]]
            if buf.numel() != n or (n and not (int(buf.min()) >= 0 and int(buf.max()) < rows)):
                raise _fail(where, i, f"remap {spec['buffer']!r} must map the table's {n} ids into its "
                                      f"physical table's {rows} rows")
        elif kind == "tier" and "rank" in spec and isinstance(buffers.get(spec.get("rank")), torch.Tensor):
            if spec["rank"] not in checked:  # (one rank map serves every tier of its table)
                _check_rank_map(buffers[spec["rank"]], n, i, where, spec["rank"])
                checked.add(spec["rank"])
        elif kind == "hot_hash" and isinstance(buffers.get(spec.get("buffer")), torch.Tensor):
            hot = buffers[spec["buffer"]].to(torch.int64)
            if hot.numel() and not (int(hot[0]) >= 0 and int(hot[-1]) < n and bool((hot[1:] > hot[:-1]).all())):
                raise _fail(where, i, f"hot ids {spec['buffer']!r} must be distinct ids of the table's {n} in "
                                      f"ascending order (the lookup binary-searches them)")
        elif kind == "tier" and "rank" not in spec:
            _check_directories(spec, buffers, n, rows, i, where)


def _check_rank_map(rank: torch.Tensor, n: int, i: int, where: str, name: str) -> None:
    """A rank map gives each of the table's n ids its own rank: n values in [0, n), none twice (then
    they are every rank once). The check keeps a bool a rank: a quarter of an int32 map's bytes."""
    if rank.numel() != n:
        raise _fail(where, i, f"rank map {name!r} holds {rank.numel()} ranks, one for each of the table's {n} ids")
    if n and not (int(rank.min()) >= 0 and int(rank.max()) < n):
        raise _fail(where, i, f"rank map {name!r} holds ranks outside [0, {n})")
    seen = torch.zeros(n, dtype=torch.bool)
    seen[rank.to(torch.int64)] = True
    if not bool(seen.all()):
        raise _fail(where, i, f"rank map {name!r} gives {n - int(seen.sum())} ranks to no id, so some ids share a "
                              f"rank (a row); each of the table's {n} ids needs its own")


def _check_directories(spec: dict[str, Any], buffers: dict[str, torch.Tensor], n: int, rows: int,
                       i: int, where: str) -> None:
    names, block, j = spec.get("buffers"), spec.get("block", 16), spec.get("tier")
    if not (isinstance(names, list) and names and all(isinstance(b, str) and isinstance(buffers.get(b), torch.Tensor)
                                                      for b in names)) or block not in (16, 32):
        return  # refused with its own message when the transform is built
    if not is_int(j) or not 0 <= j <= len(names):
        raise _fail(where, i, f"tier {j!r} of a table with {len(names) + 1} tiers")
    members, union, total = [], None, 0
    for name in names:
        words = _directory_members(buffers[name], n, block, i, where, name)
        members.append(int(popcount32(words).sum()))
        total += members[-1]
        union = words if union is None else union | words
    if int(popcount32(union).sum()) != total:
        raise _fail(where, i, f"tier directories {names} overlap (an id in two tiers)")
    held = members[j] if j < len(names) else n - total
    if held != rows:
        raise _fail(where, i, f"tier {j} holds {held} of the table's ids, its physical table {rows} rows")
