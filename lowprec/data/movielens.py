"""MovieLens ratings -> a time-windowed click-style dataset with causal history features.

Reads `ratings.csv(.gz)` (userId,movieId,rating,timestamp) and `movies.csv(.gz)` (movieId,title,genres)
from a MovieLens directory. Label: rating >= 4. Rows are sorted by time (stable, so equal timestamps keep
file order) and split into calendar windows (UTC year or month) of the rating timestamp; calendar
periods without ratings are skipped, and each window is labelled "2014" or "2014-03".

Sparse features: `user` and `movie` (raw ids remapped to 0..n-1 in sorted raw-id order; the raw id of
each remapped id is saved as `ids_user.npy` / `ids_movie.npy`), and `genres` (multi-hot, hotness = the
most genres any movie has, padded with -1; "(no genres listed)" is an empty bag; vocabulary in
`genres.json`).

Dense features (DENSE_NAMES), all computed only from ratings with a STRICTLY earlier timestamp, so
ratings sharing a timestamp never see each other. Means and shares are shrunk towards the global value
of the earlier ratings with PRIOR_WEIGHT pseudo-ratings (or towards 3.5 / 0.5 before any rating):
  user_count, movie_count         log1p(number of earlier ratings)
  user_mean, movie_mean           shrunk mean rating minus the global earlier mean
  user_pos, movie_pos             shrunk share of ratings >= 4
  user_genre_mean, user_genre_pos the user's earlier ratings of movies sharing a genre with this one
                                  (summed over this movie's genres), shrunk towards the user's values
  user_genre_share                that genre history as a share of the user's history
  movie_age                       log1p(max(0, rating year - release year from the title)); 0 if unknown
  hour_sin, hour_cos, wday_sin, wday_cos   UTC hour of day and day of week on the unit circle
  user_gap                        log1p(hours since the user's previous earlier rating); 0 for a first one
Memory is O(ratings): MovieLens fits comfortably (ml-25m needs a few GB). Windows are calendar
periods (lowprec.data.calendar).
"""

from __future__ import annotations

import csv
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from lowprec.data import encoding as fingerprint
from lowprec.data.calendar import period_info, period_keys
from lowprec.data.csvlabel import plain_int
from lowprec.data.csvschema import TIME_MAX, TIME_MIN, TIME_YEARS
from lowprec.data.dataset import DatasetMeta, DatasetWriter, SparseFeature
from lowprec.data.rawinput import CHUNK_ROWS, BadRows, InputStats, Reporter, guarded, header_positions, open_input
from lowprec.data.records import error_text, records, spans, strict_reader
from lowprec.errors import InputError
from lowprec.progress import Stages

DENSE_NAMES = [
    "user_count", "user_mean", "user_pos", "movie_count", "movie_mean", "movie_pos",
    "user_genre_mean", "user_genre_pos", "user_genre_share", "movie_age",
    "hour_sin", "hour_cos", "wday_sin", "wday_cos", "user_gap",
]
PRIOR_WEIGHT = 5.0
DEFAULT_MEAN, DEFAULT_POS = 3.5, 0.5
PERIODS = ("year", "month")
NO_GENRES = "(no genres listed)"
_YEAR_RE = re.compile(r"\((\d{4})[^()]*\)\s*$")


@dataclass
class Ratings:
    user: np.ndarray  # raw ids, int64
    movie: np.ndarray
    rating: np.ndarray  # float64
    ts: np.ndarray  # unix seconds, int64


def find_file(root: Path, name: str) -> Path:
    for cand in (root / name, root / f"{name}.gz"):
        if cand.is_file():
            return cand
    raise InputError(f"{root}: no {name} or {name}.gz (is this a MovieLens directory?)")


def _integer(cell: bytes) -> int:
    """As plain_int (int() alone reads `1_0` as 10); ASCII digits, the common case, checked once."""
    return int(cell) if cell.isdigit() else plain_int(cell.decode(errors="replace"))


def read_ratings(path: Path, bad: BadRows, stats: InputStats, progress: Stages | None) -> Ratings:
    """userId,movieId,rating,timestamp rows by the CSV reader's number rules (ASCII digits, no `1_0`);
    another number of fields than the header is a bad row; blank lines (spaces too) are ignored."""
    cols: list[list[Any]] = [[], [], [], []]
    with open_input(path, stats, progress) as (stream, tick):
        pos: list[int] = []
        width = 0
        for line in guarded(stream, path, lambda: stats.lines + 1):
            stats.lines += 1
            line = line.rstrip(b"\r\n")
            if stats.lines == 1:
                header = line.decode("utf-8-sig", errors="replace").split(",")
                pos, width = header_positions(path, header, ["userId", "movieId", "rating", "timestamp"]), len(header)
                continue
            if not line.strip():
                continue
            parts = line.split(b",")
            try:
                if len(parts) != width:
                    raise ValueError(f"{len(parts)} fields, the header has {width}")
                r = parts[pos[2]]
                if b"_" in r:  # (float() reads `0_5` as 5.0)
                    raise ValueError(f"rating {r[:40].decode(errors='replace')!r} is not a plain number")
                vals = (_integer(parts[pos[0]]), _integer(parts[pos[1]]), float(r),
                        _integer(parts[pos[3]]))
                if not 0 <= vals[2] <= 10:
                    raise ValueError(f"rating {vals[2]} out of range")
                if not (-2**63 <= vals[0] < 2**63 and -2**63 <= vals[1] < 2**63):
                    raise ValueError("an id beyond 64-bit integers")
                if not TIME_MIN <= vals[3] < TIME_MAX:  # (milliseconds read as seconds land past 9998)
                    raise ValueError(f"timestamp {vals[3]} is not unix seconds in {TIME_YEARS}"
                                     + (" (milliseconds? MovieLens writes seconds)" if TIME_MIN <= vals[3] / 1000
                                        < TIME_MAX else ""))
            except ValueError as exc:
                stats.bad_rows += 1
                bad.add(path, stats.lines, "rating row", f"malformed rating row ({exc})")
                continue
            for c, v in zip(cols, vals):
                c.append(v)
            stats.rows += 1
            if stats.rows % CHUNK_ROWS == 0:
                tick()
    if stats.lines == 0:
        raise InputError(f"{path}: empty file")
    return Ratings(np.asarray(cols[0], np.int64), np.asarray(cols[1], np.int64),
                   np.asarray(cols[2], np.float64), np.asarray(cols[3], np.int64))


def read_movies(
    path: Path, bad: BadRows, stats: InputStats, progress: Stages | None
) -> dict[int, tuple[int | None, list[str]]]:
    """movieId -> (release year or None, genres)."""
    out: dict[int, tuple[int | None, list[str]]] = {}
    with open_input(path, stats, progress) as (stream, _tick):
        reader = strict_reader(stream)
        rows = guarded(records(reader), path, lambda: reader.line_num + 1)
        header = next(rows, (0, 0, None))[2]
        if not isinstance(header, list) or [h.strip() for h in header[:3]] != ["movieId", "title", "genres"]:
            raise InputError(f"{path}:1: expected header movieId,title,genres, found {header}")
        width = len(header)
        for first, last, row in rows:
            stats.lines = last
            if isinstance(row, list) and (not row or len(row) == 1 and not row[0].strip()):
                continue
            try:
                if isinstance(row, csv.Error) or last > first:  # no title holds a line break: a quote left open
                    raise ValueError(f"malformed quoting{f' ({error_text(row)})' if isinstance(row, csv.Error) else ''}")
                if len(row) != width:
                    raise ValueError(f"{len(row)} fields, the header has {width}")
                mid = plain_int(row[0])
                title, genres = row[1], row[2]
            except (ValueError, IndexError) as exc:
                stats.bad_rows += 1
                bad.add(path, first, "movie row", f"malformed movie row ({exc}){spans(first, last)}")
                continue
            match = _YEAR_RE.search(title)
            gl = [g for g in genres.split("|") if g and g != NO_GENRES]
            out[mid] = (int(match.group(1)) if match else None, gl)
            stats.rows += 1
    return out


def causal_stats(
    key: np.ndarray, ts: np.ndarray, values: list[np.ndarray]
) -> tuple[np.ndarray, list[np.ndarray], np.ndarray]:
    """Per row: (count, [sum of each value], previous timestamp or -1) over rows with the same key and
    a strictly smaller timestamp. O(n log n), by sorting on (key, ts)."""
    order = np.lexsort((ts, key))
    k, t = key[order], ts[order]
    n = len(k)
    idx = np.arange(n)
    new_key = np.ones(n, bool)
    new_key[1:] = k[1:] != k[:-1]
    new_group = new_key.copy()
    new_group[1:] |= t[1:] != t[:-1]
    group_first = np.maximum.accumulate(np.where(new_group, idx, 0))
    key_first = np.maximum.accumulate(np.where(new_key, idx, 0))
    count = np.empty(n, np.int64)
    count[order] = group_first - key_first
    sums = []
    for v in values:
        cs = np.concatenate([[0.0], np.cumsum(v[order], dtype=np.float64)])
        s = np.empty(n)
        s[order] = cs[group_first] - cs[key_first]
        sums.append(s)
    prev = np.full(n, -1, np.int64)
    has_prev = group_first > key_first
    prev_sorted = np.where(has_prev, t[np.maximum(group_first - 1, 0)], -1)
    prev[order] = prev_sorted
    return count, sums, prev


def _shrink(total: np.ndarray, count: np.ndarray, prior: np.ndarray) -> np.ndarray:
    return (total + PRIOR_WEIGHT * prior) / (count + PRIOR_WEIGHT)


def history_features(r: Ratings, genre_rows: np.ndarray) -> dict[str, np.ndarray]:
    """Dense features by name (rows in r's order); `genre_rows` is (rows, hotness) genre ids or -1."""
    pos = (r.rating >= 4).astype(np.float64)
    g_count, (g_sum, g_pos), _ = causal_stats(np.zeros_like(r.user), r.ts, [r.rating, pos])
    prior_mean = np.where(g_count > 0, g_sum / np.maximum(g_count, 1), DEFAULT_MEAN)
    prior_pos = np.where(g_count > 0, g_pos / np.maximum(g_count, 1), DEFAULT_POS)
    feats: dict[str, np.ndarray] = {}
    u_count, (u_sum, u_pos), u_prev = causal_stats(r.user, r.ts, [r.rating, pos])
    m_count, (m_sum, m_pos), _ = causal_stats(r.movie, r.ts, [r.rating, pos])
    u_mean, u_share = _shrink(u_sum, u_count, prior_mean), _shrink(u_pos, u_count, prior_pos)
    feats["user_count"], feats["user_mean"], feats["user_pos"] = np.log1p(u_count), u_mean - prior_mean, u_share
    feats["movie_count"] = np.log1p(m_count)
    feats["movie_mean"] = _shrink(m_sum, m_count, prior_mean) - prior_mean
    feats["movie_pos"] = _shrink(m_pos, m_count, prior_pos)
    ug_count, ug_sum, ug_pos = _user_genre_totals(r, genre_rows, pos)
    feats["user_genre_mean"] = _shrink(ug_sum, ug_count, u_mean) - prior_mean
    feats["user_genre_pos"] = _shrink(ug_pos, ug_count, u_share)
    n_genres = np.maximum((genre_rows >= 0).sum(axis=1), 1)
    feats["user_genre_share"] = np.where(u_count > 0, ug_count / n_genres / np.maximum(u_count, 1), 0.0)
    feats.update(_time_features(r.ts))
    feats["user_gap"] = np.where(u_prev >= 0, np.log1p((r.ts - u_prev) / 3600.0), 0.0)
    return feats


def _user_genre_totals(r: Ratings, genre_rows: np.ndarray, pos: np.ndarray) -> tuple[np.ndarray, ...]:
    """Per row, summed over its genres: the user's earlier (count, rating sum, positives) in that genre."""
    rows, slots = np.nonzero(genre_rows >= 0)
    genre = genre_rows[rows, slots].astype(np.int64)
    key = r.user[rows] * (int(genre_rows.max(initial=0)) + 1) + genre
    count, (s, p), _ = causal_stats(key, r.ts[rows], [r.rating[rows], pos[rows]])
    n = len(r.ts)
    return (np.bincount(rows, count, n), np.bincount(rows, s, n), np.bincount(rows, p, n))


def _time_features(ts: np.ndarray) -> dict[str, np.ndarray]:
    hour = (ts % 86400) / 3600.0
    wday = ((ts // 86400) + 3) % 7  # 1970-01-01 was a Thursday; Monday = 0
    return {
        "hour_sin": np.sin(2 * np.pi * hour / 24), "hour_cos": np.cos(2 * np.pi * hour / 24),
        "wday_sin": np.sin(2 * np.pi * wday / 7), "wday_cos": np.cos(2 * np.pi * wday / 7),
    }


def prepare_movielens(
    root_in: Path, root: Path, period: str = "year", max_bad_rows: int | None = 1000,
    report: Reporter | None = None, progress: Stages | None = None, show_bad_rows: int | None = 20,
) -> tuple[DatasetMeta, BadRows]:
    """Build the windowed dataset from the MovieLens directory `root_in` into `root`."""
    if period not in PERIODS:
        raise InputError(f"--window {period!r}: movielens windows are year or month")
    if not root_in.is_dir():
        raise InputError(f"--input {root_in}: not a directory (give the MovieLens directory)")
    bad = BadRows(max_bad_rows, report, keep=show_bad_rows)
    paths = [find_file(root_in, "ratings.csv"), find_file(root_in, "movies.csv")]
    stats = [InputStats(str(p)) for p in paths]
    r = read_ratings(paths[0], bad, stats[0], progress)
    movies = read_movies(paths[1], bad, stats[1], progress)
    if len(r.ts) == 0:
        raise InputError(f"{paths[0]}: no ratings")
    order = np.argsort(r.ts, kind="stable")
    r = Ratings(r.user[order], r.movie[order], r.rating[order], r.ts[order])
    users, user_idx = np.unique(r.user, return_inverse=True)
    movie_ids = np.unique(np.concatenate([np.fromiter(movies, np.int64, len(movies)), r.movie]))
    movie_idx = np.searchsorted(movie_ids, r.movie)
    vocab, genre_table, years = _movie_tables(movie_ids, movies)
    genre_rows = genre_table[movie_idx]
    feats = history_features(r, genre_rows)
    year = period_keys(r.ts, "year").astype(np.int64) + 1970
    feats["movie_age"] = np.where(years[movie_idx] > 0, np.log1p(np.maximum(year - years[movie_idx], 0)), 0.0)
    dense = np.stack([feats[n] for n in DENSE_NAMES], axis=1).astype(np.float32)
    sparse = np.concatenate([user_idx[:, None], movie_idx[:, None], genre_rows], axis=1).astype(np.int32)
    labels = (r.rating >= 4).astype(np.int32)
    features = [SparseFeature("user", len(users)), SparseFeature("movie", len(movie_ids)),
                SparseFeature("genres", max(len(vocab), 1), genre_table.shape[1])]
    writer = DatasetWriter(root, DENSE_NAMES, features)
    _write_windows(writer, period_keys(r.ts, period), dense, sparse, labels)
    np.save(root / "ids_user.npy", users)
    np.save(root / "ids_movie.npy", movie_ids)
    (root / "genres.json").write_text(json.dumps(vocab) + "\n")
    writer.provenance.update(_provenance(stats, period, bad))
    encodings = [fingerprint.vocabulary(users.tolist(), len(users)),
                 fingerprint.vocabulary(movie_ids.tolist(), len(movie_ids)),
                 fingerprint.vocabulary(vocab, max(len(vocab), 1))]
    return writer.finish(encodings=encodings), bad


def _movie_tables(movie_ids: np.ndarray, movies: dict) -> tuple[list[str], np.ndarray, np.ndarray]:
    """(genre vocabulary, (n_movies, hotness) genre ids padded with -1, release year or 0 per movie)."""
    vocab = sorted({g for _, gl in movies.values() for g in gl})
    index = {g: i for i, g in enumerate(vocab)}
    hot = max([len(set(gl)) for _, gl in movies.values()] + [1])
    table = np.full((len(movie_ids), hot), -1, np.int64)
    years = np.zeros(len(movie_ids), np.int64)
    for i, mid in enumerate(movie_ids.tolist()):
        year, gl = movies.get(mid, (None, []))
        ids = sorted({index[g] for g in gl})
        table[i, : len(ids)] = ids
        years[i] = year or 0
    return vocab, table, years


def _write_windows(writer: DatasetWriter, keys: np.ndarray, dense, sparse, labels) -> None:
    bounds = np.flatnonzero(np.concatenate([[True], keys[1:] != keys[:-1], [True]]))
    for a, b in zip(bounds[:-1], bounds[1:]):
        ww = writer.window(**period_info(keys[a]))
        for c in range(a, b, CHUNK_ROWS):
            e = min(c + CHUNK_ROWS, b)
            ww.append(dense[c:e], sparse[c:e], labels[c:e])
        writer.add_window(ww)


def _provenance(stats: list[InputStats], period: str, bad: BadRows) -> dict[str, Any]:
    return {
        "source": "movielens",
        "inputs": [s.to_json() for s in stats],
        "label": "rating >= 4",
        "windows": f"calendar {period} of the rating timestamp (UTC); empty periods skipped",
        "dense_features": "causal history from strictly earlier timestamps; see lowprec.data.movielens",
        "prior_weight": PRIOR_WEIGHT,
        "id_maps": {"user": "ids_user.npy", "movie": "ids_movie.npy", "genres": "genres.json"},
        "bad_rows": bad.to_json(),
    }
