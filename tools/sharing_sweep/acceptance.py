"""The done-when checks of the sweep, computed from the JSON: every backend's int8 artifact against
its float model, `robe:ratio=16` on MovieLens, hot sharing of the MovieLens `movie` table."""

from __future__ import annotations

from typing import Any

from sharing_sweep.common import AUC_TOL, INT8_AUC_TOL, MIN_COMPRESSION, find_run


def acceptance(res: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {"backends": [], "robe16": [], "hot_movie": [], "reproducibility": None}
    for name, ds in res["datasets"].items():
        dense = find_run(ds, "dense-s0")
        for method in ("hash", "qr", "robe", "robe_exact"):
            runs = [r for r in ds["runs"] if r["method"] == method and r["group"] == "sweep"]
            for r in runs:
                v8 = r["variants"].get("int8")
                if v8 is None:
                    continue
                out["backends"].append({
                    "dataset": name, "id": r["id"], "method": method, "ratio": r["ratio"],
                    "float_auc": r["float"]["auc"], "int8_auc": v8["auc"],
                    "dauc_int8_vs_float": v8["dauc_vs_float"],
                    "max_abs_dprob_int8": v8["max_abs_dprob_vs_float"],
                    "max_abs_dprob_fp32": r["variants"]["fp32"]["max_abs_dprob_vs_float"],
                    "dauc_fp32_vs_float": r["variants"]["fp32"]["dauc_vs_float"],
                    "exact_form": v8["exact"], "dense_auc": dense["float"]["auc"] if dense else None})
        if name == "movielens" and dense:
            d_auc = dense["float"]["auc"]
            for rid, label in (("robe_exact-16", "robe:ratio=16 (default, exact)"),
                               ("robe-16", "robe:ratio=16,align=1")):
                r = find_run(ds, rid)
                if r is None:
                    continue
                v8 = r["variants"]["int8"]
                out["robe16"].append({
                    "spec": label, "dense_auc": d_auc, "float_auc": r["float"]["auc"],
                    "float_drop": d_auc - r["float"]["auc"], "int8_auc": v8["auc"],
                    "int8_drop": d_auc - v8["auc"], "compression_int8": v8["compression"],
                    "embedding_bytes_int8": v8["embedding_bytes"],
                    "pass_float": d_auc - r["float"]["auc"] <= AUC_TOL,
                    "pass_int8": d_auc - v8["auc"] <= INT8_AUC_TOL,
                    "pass_compression": v8["compression"] >= MIN_COMPRESSION,
                    "delong_float_vs_dense": r["float"]["vs_dense"], "delong_int8_vs_dense": v8["vs_dense"]})
            for r in ds["runs"]:
                if r["group"] not in ("acceptance", "hot-fraction"):
                    continue
                for prec, v in r["variants"].items():
                    out["hot_movie"].append({
                        "id": r["id"], "precision": prec, "calib_windows": r.get("calib_windows"),
                        "hot": r.get("hot", 0.5), "auc": v["auc"], "ne": v["ne"], "drop": d_auc - v["auc"],
                        "compression": v["compression"], "embedding_bytes": v["embedding_bytes"],
                        "pass": d_auc - v["auc"] <= AUC_TOL, "vs_dense": v["vs_dense"]})
    out["reproducibility"] = res.get("reproducibility")
    return out
