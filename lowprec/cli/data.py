"""`lowprec data synth|prepare|append`: build prepared datasets from a generator or raw files, and grow them.

Thin layer: parse options, check which apply to the chosen format, call one library function inside
`fileio.atomic_dir` (so a failure leaves nothing new at --out and keeps what was there), print bad rows
to stderr (up to BAD_ROWS_SHOWN), the written dataset's warnings (said once it is written, with the
windows' final numbers: nothing about a dataset a failed run never wrote) and a one-line summary, or
with --json one JSON object last on stdout.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, Callable

import click
from tqdm import tqdm

from lowprec import distributed as dist
from lowprec.cli import check_parallel, emit_json
from lowprec.cli._common import SEED, StageBars
from lowprec.data.criteo import parse_table_sizes, prepare_criteo
from lowprec.data.csvread import prepare_csv
from lowprec.data.csvschema import parse_window_option
from lowprec.data.dataset import DatasetMeta
from lowprec.data.movielens import prepare_movielens
from lowprec.data.rawinput import DEFAULT_MAX_BAD_ROWS, BadRows, check_inputs
from lowprec.data.latent import synth_config
from lowprec.data.synth import DRIFTS
from lowprec.errors import warn
from lowprec.fileio import atomic_dir

BAD_ROWS_SHOWN = 20
FORMATS = ("criteo-tsv", "movielens", "csv")


@click.group("data")
@click.pass_context
def data(ctx: click.Context) -> None:
    """Make prepared datasets: time windows of dense/sparse/label arrays plus dataset.json.

    `synth` generates Criteo-shaped data with a known ground truth and optional drift; `prepare`
    converts raw Criteo TSV, MovieLens, or any CSV described by a TOML schema; `append` adds the
    windows of new files (a day of logs) to a prepared dataset.
    """
    if dist.env_world_size() > 1:
        check_parallel(f"data {ctx.invoked_subcommand}")


def _summary(out: Path, meta: DatasetMeta, bad: BadRows | None, as_json: bool, extra: dict[str, Any]) -> None:
    rows = sum(w.rows for w in meta.windows)
    n_bad = bad.count if bad else 0
    if as_json:
        emit_json({"out": str(out), **extra, "windows": len(meta.windows), "rows": rows, "bad_rows": n_bad,
                   "bad_rows_by_reason": dict(bad.by_reason) if bad else {},
                   "window_labels": [w.label for w in meta.windows], "window_rows": [w.rows for w in meta.windows]})
        return
    n_win = len(meta.windows)
    click.echo(f"wrote {out}: {n_win} window{'s' * (n_win != 1)}{_span(meta.windows)}, {rows:,} rows, "
               f"{n_bad:,} bad rows skipped")


def _span(windows: Any) -> str:
    """` (first .. last)` of the windows' labels, ` (only)` for one, nothing without labels."""
    labels = [w.label for w in windows if w.label]
    return f" ({labels[0]} .. {labels[-1]})" if len(labels) > 1 else f" ({labels[0]})" if labels else ""


def _say_warnings(said: Any) -> None:
    """A written dataset's (or append run's) provenance `warnings`, each a `warning: ...` line on stderr."""
    for message in said or []:
        warn(str(message))


def _say_skipped(bad: BadRows) -> None:
    """The bad rows a read skipped, by reason, on stderr (nothing when there were none)."""
    if bad.count:
        reasons = ", ".join(f"{k}: {v}" for k, v in sorted(bad.by_reason.items()))
        click.echo(f"skipped {bad.count:,} bad rows ({reasons})", err=True)


def _reporter(limit: int | None = BAD_ROWS_SHOWN) -> Callable[[str], None]:
    shown = [0]

    def report(msg: str) -> None:
        if limit is None or shown[0] < limit:
            tqdm.write(f"bad row: {msg}", file=sys.stderr)  # keeps the progress bar intact
        elif shown[0] == limit:
            tqdm.write("(further bad rows are counted, not shown; --show-bad-rows N shows more)", file=sys.stderr)
        shown[0] += 1

    return report


@data.command("synth")
@click.option("--out", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="Output dataset directory (replaced atomically).")
@click.option("--windows", default=8, show_default=True, type=click.IntRange(min=1),
              help="Number of windows (one synthetic day each, from 2024-01-01).")
@click.option("--rows-per-window", default=100_000, show_default=True, type=click.IntRange(min=1),
              help="Rows in each window (written in chunks; memory does not grow with it).")
@click.option("--seed", default=0, show_default=True, type=SEED,
              help="Same arguments and seed give the same bytes.")
@click.option("--scale", default=0.001, show_default=True, type=click.FloatRange(0, 4, min_open=True),
              help="Table sizes = Criteo Kaggle cardinalities x scale (at least 2 rows).")
@click.option("--drift", default="none", show_default=True, type=click.Choice(DRIFTS),
              help="popularity: hot ids move; new-ids: a growing share of never-seen ids; "
                   "dense-scale: dense features x3.5; ctr: base click rate ~0.25 -> ~0.38.")
@click.option("--drift-start", default=None, type=click.IntRange(min=0),
              help="First drifted window  [default: windows // 2]")
@click.option("--kind", default="dense", show_default=True,
              help="dense: the generator above; latent[:zipf=1.1,rate=0.25,auc=0.8,dim=8,hot=1]: per-id biases and "
                   "latent factors where memorising ids matters, with true probabilities (day_{i}_prob.npy) "
                   "and Bayes AUC/NE per window; hot=H puts H Zipf ids in each bag of the 8 large tables "
                   "(multi-hot, sum-pooled truth) (lowprec/data/latent.py).")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON summary object as the last stdout line.")
def synth(out: Path, windows: int, rows_per_window: int, seed: int, scale: float, drift: str,
          drift_start: int | None, kind: str, as_json: bool) -> None:
    """Generate Criteo-shaped synthetic data (13 dense, 26 sparse) with a hidden ground truth.

    Ids are Zipf-distributed (hot ids permuted per table); labels come from a hidden logistic model
    with pairwise interactions (click rate ~0.25, oracle AUC ~0.78, recorded per window in
    dataset.json provenance), so a DLRM can learn it. Example:

    \b
        lowprec data synth --out data/synth --windows 8 --rows-per-window 100000 --drift popularity
    """
    cfg, generate = synth_config(kind, windows=windows, rows_per_window=rows_per_window, seed=seed, scale=scale,
                                 drift=drift, drift_start=drift_start)
    with StageBars() as bars, atomic_dir(out, "dataset") as tmp:
        meta = generate(cfg, tmp, progress=bars)
    _say_warnings(meta.provenance.get("warnings"))
    _summary(out, meta, None, as_json, {"command": "data synth", "kind": kind.partition(":")[0], "drift": drift,
                                        "drift_start": cfg.start})


def _prepare_call(fmt: str, inputs: list[Path], schema: Path | None, window: str | None,
                  table_size: str | None, rows_per_window: int | None,
                  vocab_from: Path | None = None) -> tuple[Callable, dict[str, Any]]:
    """Check the options against the format; return the library function and its keyword arguments."""
    def forbid(name: str, value: Any) -> None:
        if value is not None:
            raise click.UsageError(f"{name} does not apply to --format {fmt}")

    if rows_per_window is not None:
        if window is not None:
            raise click.UsageError("give --window rows:N or --rows-per-window N, not both")
        window = f"rows:{rows_per_window}"
    if fmt != "csv":
        forbid("--vocab-from", vocab_from)
    if fmt == "movielens":
        forbid("--schema", schema)
        forbid("--table-size", table_size)
        if len(inputs) != 1:
            raise click.UsageError("--format movielens takes one --input DIRECTORY")
        if window not in (None, "year", "month"):
            raise click.UsageError(f"--window {window!r}: movielens windows are year or month")
        return prepare_movielens, {"root_in": inputs[0], "period": window or "year"}
    kind, n = parse_window_option(window or "file")
    if fmt == "criteo-tsv":
        forbid("--schema", schema)
        if kind not in ("file", "rows"):
            raise click.UsageError("criteo TSV has no timestamps: use --window file or rows:N")
        sizes = parse_table_sizes(table_size) if table_size is not None else None
        return prepare_criteo, {"inputs": inputs, "table_sizes": sizes, "rows_per_window": n}
    forbid("--table-size", table_size)
    if schema is None:
        raise click.UsageError("--format csv needs --schema FILE.toml (see docs/csv-schema.md)")
    return prepare_csv, {"inputs": inputs, "schema_path": schema, "window": window or "file",
                         "vocab_from": vocab_from}


@data.command("prepare")
@click.option("--format", "fmt", required=True, type=click.Choice(FORMATS), help="Kind of raw input.")
@click.option("--input", "inputs", required=True, multiple=True, type=click.Path(path_type=Path),
              help="Input file(s) (plain or .gz); several may follow one --input. movielens: the directory.")
@click.argument("more_inputs", nargs=-1, type=click.Path(path_type=Path))
@click.option("--out", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="Output dataset directory (replaced atomically; untouched on failure).")
@click.option("--schema", type=click.Path(dir_okay=False, path_type=Path), help="csv: the TOML schema.")
@click.option("--window", default=None,
              help="Windows: file | rows:N (criteo-tsv, csv; default file), year | month (movielens, "
                   "default year; csv with a time column), day (csv).")
@click.option("--rows-per-window", default=None, type=click.IntRange(min=1), help="Same as --window rows:N.")
@click.option("--table-size", default=None,
              help="criteo-tsv: hash table rows: N, 26 comma-separated N, or kaggle[:N] (per table "
                   "min(N, Kaggle cardinality + 1))  [default: 1000000]")
@click.option("--max-bad-rows", default=DEFAULT_MAX_BAD_ROWS, show_default=True, type=click.IntRange(min=-1),
              help="Stop (exit 2, nothing written) when more malformed rows are found; -1: no limit.")
@click.option("--show-bad-rows", default=BAD_ROWS_SHOWN, show_default=True, type=click.IntRange(min=-1),
              help="Bad rows located as FILE:LINE on stderr and in dataset.json provenance; -1: all.")
@click.option("--vocab-from", type=click.Path(file_okay=False, path_type=Path),
              help="csv: reuse this prepared dataset's vocabularies for `encoding = \"vocab\"` columns "
                   "(unseen values -> reserved id 0, counted), so ids mean what they meant in training.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON summary object as the last stdout line.")
def prepare(fmt: str, inputs: tuple[Path, ...], more_inputs: tuple[Path, ...], out: Path, schema: Path | None,
            window: str | None, rows_per_window: int | None, table_size: str | None, max_bad_rows: int,
            show_bad_rows: int, vocab_from: Path | None, as_json: bool) -> None:
    """Convert raw data into a prepared dataset.

    \b
    criteo-tsv  label, 13 integers, 26 hex categoricals, tab-separated (Kaggle / Terabyte);
                dense: empty or negative -> 0, then log1p; sparse: empty -> id 0,
                else 1 + int(hex, 16) % (table size - 1). One window per input file.
    movielens   a directory with ratings.csv(.gz) and movies.csv(.gz); label rating >= 4;
                causal history features from strictly earlier ratings; calendar windows.
    csv         any CSV(.gz) described by a TOML schema (docs/csv-schema.md).
    \b
    Malformed rows are skipped and reported as FILE:LINE on stderr; more than --max-bad-rows of
    them stops with exit code 2. csv and criteo-tsv run on several processes (`lowprec --nproc N
    data prepare`, or torchrun across machines that share the inputs and --out's parent
    directory): the same dataset, byte for byte (speed: reports/csv_ingest.md). Examples:
    \b
        lowprec data prepare --format criteo-tsv --input day_0.gz day_1.gz --out data/criteo
        lowprec data prepare --format movielens --input ml-latest-small --out data/ml --window year
        lowprec data prepare --format csv --input clicks.csv --schema clicks.toml --out data/c --window month
    """
    paths = list(inputs) + list(more_inputs)
    func, kwargs = _prepare_call(fmt, paths, schema, window, table_size, rows_per_window, vocab_from)
    if dist.env_world_size() > 1 and fmt == "movielens":
        raise click.UsageError("--format movielens is read by one process (its history features need every "
                               "earlier rating); csv and criteo-tsv run on several")
    shown = None if show_bad_rows < 0 else show_bad_rows
    sources = paths + [p for p in (schema, vocab_from) if p is not None]
    read = {"max_bad_rows": None if max_bad_rows < 0 else max_bad_rows, "report": _reporter(shown),
            "show_bad_rows": shown, **kwargs}
    dist.check_same(sources)
    if fmt != "movielens":  # files, each named plainly (a directory, a FIFO), before the output is claimed
        check_inputs([Path(p) for p in paths])
    if not dist.is_main():  # a reading rank: its share of the input, into rank 0's output (lowprec.data.parts)
        func(root=None, **read)
        return
    with StageBars() as bars, atomic_dir(out, "dataset", inputs=sources) as tmp:
        meta, bad = func(root=tmp, progress=bars, **read)
    _say_warnings(meta.provenance.get("warnings"))
    _say_skipped(bad)
    _summary(out, meta, bad, as_json, {"command": "data prepare", "format": fmt})


@data.command("append")
@click.option("--data", "data_dir", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="The prepared dataset (csv or criteo-tsv) to add windows to, in place.")
@click.option("--input", "inputs", required=True, multiple=True, type=click.Path(path_type=Path),
              help="New raw file(s) (plain or .gz); several may follow one --input.")
@click.argument("more_inputs", nargs=-1, type=click.Path(path_type=Path))
@click.option("--max-bad-rows", default=DEFAULT_MAX_BAD_ROWS, show_default=True, type=click.IntRange(min=-1),
              help="Stop (exit 2, the dataset untouched) when more malformed rows are found; -1: no limit.")
@click.option("--show-bad-rows", default=BAD_ROWS_SHOWN, show_default=True, type=click.IntRange(min=-1),
              help="Bad rows located as FILE:LINE on stderr and in dataset.json provenance; -1: all.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON summary object as the last stdout line.")
def append(data_dir: Path, inputs: tuple[Path, ...], more_inputs: tuple[Path, ...], max_bad_rows: int,
           show_bad_rows: int, as_json: bool) -> None:
    """Add the windows of new raw files after a prepared dataset's last window.

    For the daily job: the new files are read as the dataset's own were (format, CSV schema, window
    option and table sizes from its dataset.json; CSV vocabularies frozen, new values to id 0,
    counted), so models trained on it score the new windows, and existing windows stay as they are
    (drift's history still matches them). Refused, the dataset untouched: a file already in it,
    calendar windows starting before its last window ends, MovieLens and generated datasets.
    A csv or criteo-tsv dataset's new files are read on several processes under `lowprec --nproc N`
    or torchrun, as `data prepare` reads them. Example:

    \b
        lowprec data append --data data/clicks --input clicks-2024-03-08.csv.gz
    """
    from lowprec.data.append import append_windows

    shown = None if show_bad_rows < 0 else show_bad_rows
    paths = list(inputs) + list(more_inputs)
    dist.check_same([*paths, data_dir / "dataset.json"])
    with StageBars() as bars:
        meta, bad, added = append_windows(data_dir, paths, max_bad_rows=None if max_bad_rows < 0 else max_bad_rows,
                                          report=_reporter(shown), progress=bars, show_bad_rows=shown)
    if meta is None:  # a reading rank under torchrun: rank 0 reports
        return
    _say_warnings(meta.provenance["appends"][-1].get("warnings"))
    _say_skipped(bad)
    new = [w for w in meta.windows if w.index in set(added)]
    rows = sum(w.rows for w in new)
    if as_json:
        emit_json({"data": str(data_dir), "command": "data append", "added": added,
                   "added_labels": [w.label for w in new], "added_rows": rows, "windows": len(meta.windows),
                   "bad_rows": bad.count, "bad_rows_by_reason": dict(bad.by_reason)})
        return
    click.echo(f"appended {len(added)} window{'s' * (len(added) != 1)}{_span(new)} to {data_dir}: {rows:,} rows, "
               f"{bad.count:,} bad rows skipped; it now holds {len(meta.windows)} windows")


COMMANDS = [data]
