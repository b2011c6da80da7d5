"""Table lookups of converted artifacts on a data window's real batches, side by side in one process.

    python tools/bench_plan_lookup.py --data D --window 4 --artifact int4=A4 --artifact plan=AP \\
        [--baseline int4] [--batch 2048] [--batches 4] [--repeats 7] --out reports/X.json

For each artifact (`lowprec convert` output, loaded as `lowprec eval` loads it), the embedding stage
alone: `QuantizedEmbeddings.lookup_ids` on the loader's FeatureIds of --batches batches of --batch
rows of --window (the layout the loader hands the runtime), or with `--stage model` the whole model
call on them (lookups, then the MLPs and the feature interaction: what `--objective latency` times).
`--anon` adds each artifact once more with its tables copied out of the file mapping. An artifact with rank-ordered tiered tables ('.../rank' layouts) is
timed twice: on ids renumbered to ranks beforehand (`QuantizedEmbeddings.ranked`, the feature
pipeline's job; its output is checked equal to the raw-id lookup), and on raw ids (the runtime maps
id -> rank itself). Variants interleave per repeat (tools/_bench_common.interleaved); samples/s is
--batch over the mean seconds a call, and every ratio is paired per repeat against --baseline.
Bytes are the artifact manifest's embedding bytes. Prints the markdown table; writes --out (JSON).
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path
from typing import Any

import _bench_common as bc

TOOL = "bench_plan_lookup.py"


def parse(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", required=True, help="prepared dataset directory")
    ap.add_argument("--window", type=int, required=True, help="window whose batches are looked up")
    ap.add_argument("--artifact", action="append", required=True, metavar="NAME=DIR",
                    help="an artifact to time (repeat the option)")
    ap.add_argument("--baseline", help="NAME the ratios are against [the first --artifact]")
    ap.add_argument("--batch", type=int, default=2048)
    ap.add_argument("--batches", type=int, default=4, help="distinct batches cycled through")
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--block-seconds", type=float, default=0.1)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--anon", action="store_true",
                    help="also time each artifact with its tables copied into anonymous memory (served as "
                         "bench_tiered's modules are), not from the read-only file mapping")
    ap.add_argument("--stage", choices=("embeddings", "model"), default="embeddings",
                    help="time the table lookups alone, or the whole model call (lookups, MLPs, interaction)")
    ap.add_argument("--out", required=True)
    args = ap.parse_args(argv)
    args.artifacts = {}
    for spec in args.artifact:
        name, eq, path = spec.partition("=")
        if not eq or not name or not Path(path).is_dir():
            ap.error(f"--artifact {spec!r}: expected NAME=DIR with an artifact directory")
        args.artifacts[name] = Path(path)
    args.baseline = args.baseline or next(iter(args.artifacts))
    if args.baseline not in args.artifacts:
        ap.error(f"--baseline {args.baseline!r} is not one of the --artifact names")
    return args


def load_batches(data: str, window: int, batch: int, n: int) -> list[Any]:
    from lowprec.data.batches import iter_batches
    from lowprec.data.dataset import Dataset

    out = []
    for b in iter_batches(Dataset(data), [window], batch, feature_ids=True):
        if len(b) == batch:
            out.append(b)
        if len(out) == n:
            return out
    raise SystemExit(f"window {window} holds fewer than {n} batches of {batch} rows")


def variants(args: argparse.Namespace, batches: list[Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """name -> lookup callable (cycling over the batches), and name -> facts (bytes, tables' forms)."""
    import torch

    from lowprec.checkpoint.artifact import load_artifact

    calls, facts = {}, {}
    loads = [(name, path, False) for name, path in args.artifacts.items()]
    loads += [(f"{name}, tables in anonymous memory", path, True) for name, path in args.artifacts.items()
              if args.anon]
    for name, path, anon in loads:
        runtime, manifest = load_artifact(path)
        if anon:  # the TBE serves a private copy of the mapped bytes
            tbe = runtime.embeddings.tbe
            runtime.embeddings.serve_from(tbe.weights_host.clone(), list(tbe.weights_physical_offsets))
        emb = runtime.embeddings
        info = {"artifact": str(path), "embedding_bytes": manifest["embedding_bytes"],
                "tables": {t["name"]: t["precision"] + (f" {t['sharing']['kind']}" if t.get("sharing") else "")
                           for t in manifest["tables"]}}
        dense = [b.dense for b in batches]

        def call(ids: list[Any], ranked: bool, rt=runtime) -> Any:
            if args.stage == "embeddings":
                return bc.cycling(lambda k: rt.embeddings.lookup_ids(ids[k], ranked), len(ids))
            return bc.cycling(lambda k: rt.logits(dense[k], rt.embeddings.lookup_ids(ids[k], ranked)), len(ids))
        raw = [b.ids for b in batches]
        calls[name] = call(raw, False)
        if emb.rank_maps():
            ranked = [emb.ranked(b) for b in raw]
            with torch.inference_mode():
                info["ranked_equals_raw"] = all(torch.equal(emb.lookup_ids(r, True), emb.lookup_ids(b))
                                                for r, b in zip(ranked, raw))
            calls[f"{name}, ranked ids"] = call(ranked, True)
            facts[f"{name}, ranked ids"] = info
        facts[name] = info
    return calls, facts


def render(result: dict[str, Any]) -> str:
    base = result["baseline"]
    rows = []
    for name, r in result["variants"].items():
        rows.append([name, f"{r['embedding_bytes'] / 1e6:,.1f}", f"{r['embedding_bytes'] / result['bytes'][base]:.3f}",
                     bc.fmt_spread(r["samples_per_s"], 1e-3, 1, "k"), bc.fmt_ratio(r["vs_baseline"])])
    lines = [f"`{result['command']}`", "", bc.machine_line(result["machine"]),
             f"load average before / after: {result['load_before']} / {result['load_after']}", "",
             *bc.md_table(["variant", "table MB", f"x {base} bytes", "samples/s (median [min-max])",
                           f"x {base} speed (paired)"], rows)]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    import os

    import torch

    args = parse(argv)
    threads = bc.set_threads(args.threads)
    batches = load_batches(args.data, args.window, args.batch, args.batches)
    calls, facts = variants(args, batches)
    load_before = os.getloadavg()
    with torch.inference_mode():
        times = bc.interleaved(calls, args.repeats, block_seconds=args.block_seconds)
    load_after = os.getloadavg()
    base = args.baseline
    result = {"tool": TOOL, "command": bc.command_line(TOOL, argv), "machine": bc.machine(threads),
              "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()
                           if k not in ("artifacts", "out")},
              "baseline": base, "bytes": {n: f["embedding_bytes"] for n, f in facts.items()},
              "load_before": [round(x, 2) for x in load_before], "load_after": [round(x, 2) for x in load_after],
              "variants": {n: {**facts[n], "seconds": t, "samples_per_s": bc.spread([args.batch / s for s in t]),
                               "vs_baseline": bc.speedup(times[base], t)} for n, t in times.items()}}
    bc.write_json(args.out, result)
    print(render(result))
    print(f"median seconds a call: {', '.join(f'{n} {statistics.median(t) * 1e3:.3f} ms' for n, t in times.items())}",
          file=sys.stderr)
    return result


if __name__ == "__main__":
    main()
