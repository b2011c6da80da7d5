"""Where the tiered layout's lookup time goes, at full Kaggle scale: the TBE alone on indices split
into tiers with the other tier's slots as -1 pads (the runtime's padded path) or with pads dropped
(compacted bags), and the padded TBE plus lowprec's per-table pooling, against uniform fp16/int4.

    OMP_NUM_THREADS=1 python tools/_tiered_breakdown.py     (writes /tmp/tiered/exp.json)
"""
import json
import os
import sys
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import torch
import bench_tiered as bt, _bench_common as bc
from lowprec.plan import TableChoice
from lowprec.precision import Precision
from lowprec.data.synth import KAGGLE_CARDINALITIES
bc.set_threads(1)
rows = list(KAGGLE_CARDINALITIES)
tr = bt.Traffic(rows, 0)
counts = [tr.counts(t, 10 * 2048 * 20, 10_000) for t in range(len(rows))]
batches = [tr.batch(2048, 20, 1 + k) for k in range(3)]
mods = {}
for frac in ("0.02", "0.002"):
    ch = TableChoice(Precision.INT4, {"kind": "tiered", "tiers": bt.parse_tiers(frac + ":fp16")})
    mods["tiered " + frac], _ = bt.shared_module(rows, 16, ch, TableChoice(Precision.FP16), 100_000, counts, 20, 0)
for p in ("fp16", "int4"):
    mods[p] = bt.uniform_module(rows, 16, Precision(p), 20, 0)
print("built", file=sys.stderr, flush=True)
T = len(rows)
var = {}
for p in ("fp16", "int4"):
    var[p] = bc.cycling(lambda k, m=mods[p]: m.tbe(batches[k].indices, batches[k].offsets), 3)
for name in ("tiered 0.02", "tiered 0.002"):
    m = mods[name]
    padded = [m.padded_inputs([f.table(t) for t in range(T)]) for f in batches]
    compact = []
    for f in batches:
        i, o, w = m.tbe_inputs([f.table(t) for t in range(T)])
        compact.append((i, o))
    var[name + " padded, TBE only"] = bc.cycling(lambda k, m=m, s=padded: m.tbe(*s[k]), 3)
    var[name + " pads dropped, TBE only"] = bc.cycling(lambda k, m=m, s=compact: m.tbe(*s[k]), 3)
    var[name + " padded + pooling"] = bc.cycling(lambda k, m=m, s=padded: m.pooled_from_tbe(m.tbe(*s[k]), 2048), 3)
with torch.no_grad():
    times = bc.interleaved(var, 7, block_seconds=0.1, min_seconds=0.3)
out = {k: {"ms": bc.spread([x * 1000 for x in v]), "over_int4": bc.speedup(times["int4"], v)} for k, v in times.items()}
out["load"] = os.getloadavg()
os.makedirs("/tmp/tiered", exist_ok=True)
json.dump(out, open("/tmp/tiered/exp.json", "w"), indent=1)
for k, v in out.items():
    if k != "load": print(f"{k:<36} {bc.fmt_spread(v['ms'])}  x int4 {bc.fmt_ratio(v['over_int4'])}")
print(out["load"])
