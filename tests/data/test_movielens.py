"""The MovieLens reader on the real ml-latest-small: windows, labels, sorting, and causal features
checked against a brute-force recomputation from the raw CSV."""

from __future__ import annotations

import csv
import datetime as dt
import gzip
import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from lowprec.cli import main
from lowprec.data.batches import iter_batches
from lowprec.data.dataset import Dataset
from lowprec.data.movielens import DEFAULT_MEAN, DEFAULT_POS, DENSE_NAMES, PRIOR_WEIGHT
from lowprec.fileio import sha256_file

ML = Path(__file__).resolve().parents[2] / ".." / "shared" / "data" / "movielens-latest-small"
pytestmark = pytest.mark.skipif(not (ML / "ratings.csv.gz").is_file(),
                                reason=f"MovieLens ml-latest-small not found at {ML.resolve()}")
COL = {n: i for i, n in enumerate(DENSE_NAMES)}


@pytest.fixture(scope="module")
def raw() -> dict[str, np.ndarray]:
    with gzip.open(ML / "ratings.csv.gz", "rt") as fh:
        rows = list(csv.reader(fh))[1:]
    r = {k: np.array([float(x[i]) for x in rows]) for i, k in enumerate(["user", "movie", "rating", "ts"])}
    order = np.argsort(r["ts"], kind="stable")
    return {k: v[order] for k, v in r.items()}


@pytest.fixture(scope="module")
def genres() -> dict[int, list[str]]:
    with gzip.open(ML / "movies.csv.gz", "rt", encoding="utf-8") as fh:
        return {int(m): [x for x in g.split("|") if x != "(no genres listed)"]
                for m, _, g in list(csv.reader(fh))[1:]}


@pytest.fixture(scope="module")
def ds(tmp_path_factory) -> tuple[Dataset, dict]:
    out = tmp_path_factory.mktemp("ml") / "ds"
    res = CliRunner().invoke(main, ["data", "prepare", "--format", "movielens", "--input", str(ML),
                                    "--out", str(out), "--window", "year", "--json"])
    assert res.exit_code == 0, res.output
    return Dataset(out), json.loads(res.stdout.strip().splitlines()[-1])


def stacked(d: Dataset) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    parts = [d.arrays(w) for w in d.meta.window_indices]
    return tuple(np.concatenate([p[i] for p in parts]) for i in range(3))


def test_windows_rows_and_labels(ds, raw):
    d, summary = ds
    years = np.array([dt.datetime.fromtimestamp(t, dt.timezone.utc).year for t in raw["ts"].astype(int)])
    labels = [str(y) for y in range(1996, 2019)]
    assert [w.label for w in d.meta.windows] == labels == summary["window_labels"]
    assert [w.rows for w in d.meta.windows] == [int((years == int(y)).sum()) for y in labels]
    assert sum(w.rows for w in d.meta.windows) == 100_836 == summary["rows"]
    assert d.meta.windows[18].start == "2014-01-01T00:00:00Z" and d.meta.windows[18].end == "2015-01-01T00:00:00Z"
    _, _, y = stacked(d)
    assert int(y.sum()) == int((raw["rating"] >= 4).sum())
    assert abs(y.mean() - 0.4818) < 1e-3
    prov = d.meta.provenance
    assert [Path(i["path"]).name for i in prov["inputs"]] == ["ratings.csv.gz", "movies.csv.gz"]
    assert prov["inputs"][0]["sha256"] == sha256_file(ML / "ratings.csv.gz")
    assert prov["inputs"][1]["sha256"] == sha256_file(ML / "movies.csv.gz")


def test_rows_sorted_by_time_and_ids_remapped(ds, raw):
    d, _ = ds
    _, sparse, _ = stacked(d)
    users, movies = np.load(d.root / "ids_user.npy"), np.load(d.root / "ids_movie.npy")
    np.testing.assert_array_equal(users[sparse[:, 0]], raw["user"])
    np.testing.assert_array_equal(movies[sparse[:, 1]], raw["movie"])
    assert d.meta.num_embeddings[:2] == [610, len(movies)] and sparse[:, :2].min() == 0
    assert d.meta.hotness == [1, 1, 10]
    g = sparse[:, 2:]
    assert ((g == -1) | (g >= 0)).all() and (g[:, 0] >= 0).mean() > 0.99
    assert sum(len(b) for b in iter_batches(d, d.meta.window_indices, batch_size=8192)) == 100_836


def test_first_rating_has_no_history_and_equal_timestamps_do_not_see_each_other(ds, raw):
    d, _ = ds
    dense, _, _ = stacked(d)
    _, first = np.unique(raw["user"], return_index=True)
    assert (dense[first, COL["user_count"]] == 0).all()
    assert (dense[first, COL["user_gap"]] == 0).all()
    key = raw["user"] * 1e10 + raw["ts"]
    _, inv, cnt = np.unique(key, return_inverse=True, return_counts=True)
    grouped = cnt[inv] > 1
    assert grouped.sum() > 1000  # ml-latest-small has many same-second ratings
    for g in np.unique(inv[grouped])[:200]:
        vals = dense[inv == g][:, [COL["user_count"], COL["user_mean"], COL["user_pos"]]]
        assert (vals == vals[0]).all()


def brute_force(i: int, raw: dict, genres: dict) -> dict[str, float]:
    t, u, m = raw["ts"][i], raw["user"][i], raw["movie"][i]
    early = raw["ts"] < t
    r, pos = raw["rating"], (raw["rating"] >= 4).astype(float)
    g_mean = r[early].mean() if early.any() else DEFAULT_MEAN
    g_pos = pos[early].mean() if early.any() else DEFAULT_POS

    def shrink(sel, values, prior):
        return (values[sel].sum() + PRIOR_WEIGHT * prior) / (sel.sum() + PRIOR_WEIGHT)

    us, ms = early & (raw["user"] == u), early & (raw["movie"] == m)
    u_mean, u_pos = shrink(us, r, g_mean), shrink(us, pos, g_pos)
    mine = set(genres.get(int(m), []))
    overlap = np.array([len(mine & set(genres.get(int(x), []))) for x in raw["movie"]])
    ug_n = float((overlap * us).sum())
    ug_mean = ((overlap * us * r).sum() + PRIOR_WEIGHT * u_mean) / (ug_n + PRIOR_WEIGHT)
    ug_pos = ((overlap * us * pos).sum() + PRIOR_WEIGHT * u_pos) / (ug_n + PRIOR_WEIGHT)
    hour = (t % 86400) / 3600
    out = {
        "user_count": np.log1p(us.sum()), "user_mean": u_mean - g_mean, "user_pos": u_pos,
        "movie_count": np.log1p(ms.sum()), "movie_mean": shrink(ms, r, g_mean) - g_mean,
        "movie_pos": shrink(ms, pos, g_pos),
        "user_genre_mean": ug_mean - g_mean, "user_genre_pos": ug_pos,
        "user_genre_share": ug_n / max(len(mine), 1) / us.sum() if us.sum() else 0.0,
        "hour_sin": np.sin(2 * np.pi * hour / 24), "hour_cos": np.cos(2 * np.pi * hour / 24),
        "user_gap": np.log1p((t - raw["ts"][us].max()) / 3600) if us.any() else 0.0,
    }
    return out


def test_history_features_match_brute_force(ds, raw, genres):
    d, _ = ds
    dense, _, _ = stacked(d)
    rng = np.random.default_rng(0)
    rows = np.concatenate([[0, 1, 2], rng.choice(len(raw["ts"]), 40, replace=False), [len(raw["ts"]) - 1]])
    for i in rows:
        for name, want in brute_force(int(i), raw, genres).items():
            got = dense[i, COL[name]]
            assert got == pytest.approx(want, rel=1e-4, abs=1e-5), (int(i), name)


def test_month_windows(tmp_path):
    res = CliRunner().invoke(main, ["data", "prepare", "--format", "movielens", "--input", str(ML),
                                    "--out", str(tmp_path / "m"), "--window", "month", "--json"])
    assert res.exit_code == 0, res.output
    d = Dataset(tmp_path / "m")
    labels = [w.label for w in d.meta.windows]
    assert labels[0] == "1996-03" and labels == sorted(labels) and len(labels) > 100
    assert sum(w.rows for w in d.meta.windows) == 100_836
    assert d.meta.windows[0].start == "1996-03-01T00:00:00Z" and d.meta.windows[0].end == "1996-04-01T00:00:00Z"


def test_bad_usage(tmp_path):
    run = CliRunner().invoke
    base = ["data", "prepare", "--format", "movielens", "--out", str(tmp_path / "o")]
    assert run(main, base + ["--input", str(tmp_path)]).exit_code == 2  # no ratings.csv here
    assert run(main, base + ["--input", str(ML), "--window", "rows:5"]).exit_code == 2
    assert run(main, base + ["--input", str(ML), "--table-size", "5"]).exit_code == 2
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("header, says", [
    ("userId,movieId,rating,timestamp,userId", "more than once"),  # which userId? refused, not the first
    ("userId, movieId ,rating,timestamp", None),  # spaces around a name are not part of it
    ("userId,movieId,stars,timestamp", "lacks column(s) ['rating']"),
])
def test_ratings_header_is_read_by_name(tmp_path, header, says):
    src = tmp_path / "ml"
    src.mkdir()
    for name in ("movies.csv.gz", "links.csv.gz", "tags.csv.gz"):
        if (ML / name).is_file():
            (src / name).write_bytes((ML / name).read_bytes())
    extra = ",7" if header.count(",") == 4 else ""
    (src / "ratings.csv").write_text(header + "\n" + "".join(f"{u},1,4.0,{964982703 + u}{extra}\n" for u in range(1, 9)))
    res = CliRunner().invoke(main, ["data", "prepare", "--format", "movielens", "--input", str(src),
                                    "--out", str(tmp_path / "o")])
    if says is None:
        assert res.exit_code == 0, res.output
    else:
        assert res.exit_code == 2 and f"{src / 'ratings.csv'}:1" in res.output and says in res.output
        assert not (tmp_path / "o").exists()


def test_a_quote_left_open_in_movies_csv_is_a_bad_row_not_swallowed_movies(tmp_path):
    """A title whose quote is never closed read the movies after it as part of that title until the
    next quote: they lost their genres and years without a word. It is now a bad row naming the lines."""
    from lowprec.data.rawinput import BadRows, InputStats
    from lowprec.data.movielens import read_movies

    movies = tmp_path / "movies.csv"
    movies.write_text('movieId,title,genres\n1,"Toy Story (1995)",Comedy\n2,"Broken (1996),Drama\n'
                      '3,Heat (1995),Action|Crime\n4,"Closed, a (1997)",Drama\n5,Up (2009),Animation\n')
    bad = BadRows(None, None)
    got = read_movies(movies, bad, InputStats(str(movies)), None)
    assert got == {1: (1995, ["Comedy"]), 5: (2009, ["Animation"])}
    assert bad.count == 1 and bad.to_json()["examples"][0].startswith(f"{movies}:3: malformed movie row (malformed "
                                                                       f"quoting (',' expected after '\"')); the record runs over lines 3-5")
