"""What a latent dataset can show: AUC ceilings of models that know parts of the hidden truth.

For a dataset written by `lowprec data synth --kind latent`, rebuilds the generator's truth from the
config in dataset.json and scores one evaluation window with the true logit restricted to what a
model could know (ids it never knew get their prior mean, 0):
  bayes        every parameter (must equal the Bayes AUC recorded in dataset.json)
  seen_ids     the parameters of ids seen at least --min-count times in the training windows
  seen_biases  as seen_ids, but the biases only (every factor product 0): the additive part
  small_tables dense part + every id of the 18 small tables (no large-table id is known)
  dense_only   the dense part alone: the ceiling of a model that ignores ids
AUC only (rank-based, so the scale and base of the logit do not matter). Prints one JSON object.

    python tools/latent_oracle.py --data /tmp/latent-m/data --train-windows 0-3 --eval-window 5
"""

from __future__ import annotations

import argparse
import json
import sys

import numpy as np

from lowprec.data.dataset import Dataset
from lowprec.data.latent import LARGE_TABLES, PAIRS, LatentConfig, LatentTruth, window_bayes_auc
from lowprec.data.synth import DENSE_SCALE_FACTOR
from lowprec.data.windows import parse_windows
from lowprec.evaluation.metrics import BinaryStats


def seen_counts(ds: Dataset, windows: list[int], chunk: int = 1 << 18) -> list[np.ndarray]:
    counts = [np.zeros(n, dtype=np.int64) for n in ds.meta.num_embeddings]
    for w in windows:
        sparse = ds.arrays(w)[1]
        for r0 in range(0, len(sparse), chunk):
            block = np.asarray(sparse[r0:r0 + chunk])
            for t, c in enumerate(counts):
                c += np.bincount(block[:, t], minlength=len(c))
    return counts


def pair_terms(truth: LatentTruth, sparse: np.ndarray, known: np.ndarray) -> list[np.ndarray]:
    """Each PAIRS factor product of the rows (0 where either id is not known), as raw_logit adds it."""
    out = []
    for u, i in PAIRS:
        fu, fi = (truth.tables[t].params(sparse[:, t], True)[1] * known[:, t, None] for t in (u, i))
        out.append(np.einsum("rd,rd->r", fu, fi) / np.sqrt(truth.cfg.dim))
    return out


def one_hot_config(ds: Dataset) -> LatentConfig:
    """The generator's config of a one-hot latent dataset (these tools index ids by table column)."""
    cfg = LatentConfig(**ds.meta.provenance["config"])
    if cfg.hotness != 1:
        raise SystemExit(f"{ds.root}: multi-hot latent data (hot={cfg.hotness}); this tool reads one id a bag")
    return cfg


def oracle_aucs(ds: Dataset, train: list[int], w: int, min_count: int) -> dict[str, float]:
    cfg = one_hot_config(ds)
    truth = LatentTruth(cfg)
    dense, sparse, labels = (np.asarray(a) for a in ds.arrays(w))
    dense = dense.astype(np.float64) / (DENSE_SCALE_FACTOR if cfg.drift == "dense-scale" and cfg.drifted(w) else 1)
    counts = seen_counts(ds, train)
    seen = np.stack([counts[t][sparse[:, t]] >= min_count for t in range(sparse.shape[1])], axis=1)
    small = np.ones_like(seen)
    small[:, list(LARGE_TABLES)] = False
    masks = {"bayes": None, "seen_ids": seen, "small_tables": small, "dense_only": np.zeros_like(seen)}
    out = {name: BinaryStats().update(1 / (1 + np.exp(-truth.raw_logit(dense, sparse, m))), labels).auc
           for name, m in masks.items()}
    biases = truth.raw_logit(dense, sparse, seen) - sum(pair_terms(truth, sparse, seen))
    out["seen_biases"] = BinaryStats().update(1 / (1 + np.exp(-biases)), labels).auc
    out["traffic_share_seen_large"] = float(seen[:, list(LARGE_TABLES)].mean())
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", required=True)
    ap.add_argument("--train-windows", required=True)
    ap.add_argument("--eval-window", type=int, required=True)
    ap.add_argument("--min-count", type=int, default=1)
    args = ap.parse_args(argv)
    ds = Dataset(args.data)
    train = parse_windows(args.train_windows, ds.meta.window_indices)
    res = oracle_aucs(ds, train, args.eval_window, args.min_count)
    res["recorded_bayes_auc"] = window_bayes_auc(ds.meta).get(args.eval_window)
    print(json.dumps({k: (round(v, 4) if isinstance(v, float) else v) for k, v in res.items()}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
