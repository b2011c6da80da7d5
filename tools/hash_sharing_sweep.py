"""Hash-sharing acceptance sweep: accuracy vs table bytes of hash, QR, ROBE and post-training "hot"
sharing, alone and combined with fp16/int8/int4, on MovieLens and Criteo-shaped synthetic data.

Owns reports/hash_sharing.{json,md} and reports/hash_sharing_*.png. Everything goes through lowprec's
public library API, each call the in-process twin of one CLI command, and every row of the JSON
records those CLI commands:

    train        lowprec.train.train + save_float_model      = lowprec train ... --seed S
    float eval   load_float_model + per-window BinaryStats    = lowprec eval --model M ... --json
    artifact     lowprec.checkpoint.convert.convert          = lowprec convert --model M --precision P
                 (hot sharing: a plan file + calibration)       (or --plan PLAN --calibration C)
    bytes        the manifest's embedding_bytes/compression   = lowprec inspect A --json
    calibrate    lowprec.calibrate.calibrate + save           = lowprec calibrate --model M ...

Per model it evaluates the float model and its fp32/fp16/int8/int4 artifacts on the evaluation
windows and keeps, besides AUC/NE/log-loss/calibration and bytes, the largest |delta probability|
and delta AUC against the model's own float predictions, and a paired DeLong test against the
dense float model. It also times the exact ROBE torch runtime (`RobeBag.exact_runtime()`,
`RobeExact.exact_pooled`) against aligned ROBE served by the FBGEMM TBE on the same batch.

Usage (from the repository root):
    .venv/bin/python tools/hash_sharing_sweep.py                 # full sweep, then report
    .venv/bin/python tools/hash_sharing_sweep.py --report-only   # report from reports/hash_sharing.json
    .venv/bin/python tools/hash_sharing_sweep.py --check         # rerun a subset through the CLI
                                                                 # and compare with the JSON
    .venv/bin/python tools/hash_sharing_sweep.py --compare-json OTHER.json  # record a full rerun

The code lives in the package tools/sharing_sweep/ (one module per part: jobs, models, timing,
report, check, cli; see its __init__); this file is the entry point.

Deterministic: fixed seeds, one thread per process (OMP_NUM_THREADS=1), each model in its own job,
so the numbers do not depend on --jobs or on job order. Timings are kept under keys named
"seconds"/"speed"/"timing", which the reproducibility comparison ignores.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent))  # tools/: the sharing_sweep package

from sharing_sweep.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main(description=__doc__))
