"""Prototype: the exact-ROBE model of a ratio, realigned with a count-weighted projection (weights =
calibration row counts) instead of the library's unweighted `aligned_projection`."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np

from sharing_sweep.common import probs_path
from sharing_sweep.scoring import compare_preds, saved_float, score


def weighted_projection(model: Any, counts: dict[str, Any], batch: int = 1 << 14) -> Any:
    """Prototype: `sharing.aligned_projection` weighted by row access counts. Each aligned row of M
    becomes the count-weighted mean of the (unsigned) exact blocks of the ids mapped to it; rows no
    accessed id maps to keep the unweighted projection. Same public functions as the library's."""
    import torch

    from lowprec.model.sharing import RobeBag, RobeMember, aligned_projection, robe_bags, robe_offsets
    from lowprec.quant.hashing import sign_hash

    array = next(m for m in model.embeddings if isinstance(m, RobeBag)).array
    z, rows = array.z, array.size // array.z
    acc = torch.zeros(rows, z, dtype=torch.float64)
    cnt = torch.zeros(rows, dtype=torch.float64)
    weight = array.weight.detach()
    for m in array.members:
        c_all = torch.as_tensor(np.asarray(counts[m.name]), dtype=torch.float64).reshape(-1)
        seen = torch.nonzero(c_all).squeeze(1)
        chunks = m.dim // z
        aligned = RobeMember(m.name, m.table, m.rows, m.dim, m.ratio, m.sign, True)
        for start in range(0, len(seen), batch):
            ids = seen[start:start + batch]
            idx, w = robe_bags(ids.unsqueeze(1), m, z, array.size, array.seed)
            emb = torch.nn.functional.embedding_bag(idx, weight, per_sample_weights=w, mode="sum")
            emb = emb.view(len(ids), chunks, z).double()
            if m.sign:
                emb = emb * sign_hash(ids, m.table, range(chunks), array.seed).unsqueeze(-1)
            target = (robe_offsets(ids, aligned, z, array.size, array.seed) // z).reshape(-1)
            c = c_all[ids].repeat_interleave(chunks)
            acc.index_add_(0, target, emb.reshape(-1, z) * c[:, None])
            cnt.index_add_(0, target, c)
    out = aligned_projection(array).clone()
    hit = cnt > 0
    out[hit] = (acc[hit] / cnt[hit, None]).to(out.dtype)
    return out


def weighted_projection_model(job: dict[str, Any], ctx: dict[str, Any], ds: Any, windows: list[int],
                               res: dict[str, Any]) -> tuple[Path, np.ndarray, float]:
    """The exact-ROBE model of the same ratio, realigned with a count-weighted projection."""
    import torch

    from lowprec.calibrate import load_calibration
    from lowprec.checkpoint.float_model import load_float_model, save_float_model
    from lowprec.model.realign import realign
    from lowprec.model.sharing import RobeBag

    src = f"robe_exact-{job['ratio']}"
    exact, _ = load_float_model(Path(ctx["work"]) / "models" / src)
    counts = load_calibration(job["counts_path"])["row_counts"]
    t0 = time.time()
    projected = weighted_projection(exact, counts)
    model = realign(exact)
    with torch.no_grad():
        next(m for m in model.embeddings if isinstance(m, RobeBag)).array.weight.copy_(projected.reshape(-1, 1))
    res["seconds_projection"] = round(time.time() - t0, 2)
    model_dir = Path(ctx["work"]) / "models" / job["id"]
    save_float_model(model, model_dir, {"source": src, "projection": "count-weighted (prototype)"})
    res["commands"] += [
        f"# python (tools/sharing_sweep/projection.py): m = load_float_model({str(Path(ctx['work']) / 'models' / src)!r}); "
        f"M = weighted_projection(m, load_calibration({job['counts_path']!r})['row_counts']); "
        f"m2 = lowprec.model.realign.realign(m); m2's shared array := M; save_float_model(m2, {str(model_dir)!r})"]
    metrics, p, _ = score(model, ds, windows)
    res["float"] = dict(metrics)
    np.save(probs_path(ctx, job["id"], "float"), p)
    p_exact, auc_exact = saved_float(ctx, src, 0)
    compare_preds(res["float"], p, p_exact, auc_exact)
    res["reference"] = f"max_abs_dprob_vs_float / dauc_vs_float compare with the exact model {src}"
    return model_dir, p_exact, auc_exact
