"""TorchScript export of a quantized artifact: `model.torchscript.pt` that runs on torch + fbgemm_gpu alone.

The exported module is the runtime itself: `ServingDLRM` is the DLRM graph (lowprec.graph) over the
runtime's own `QuantizedEmbeddings` (one FBGEMM TBE plus one id-transform module per feature) and its
layer modules, all TorchScript-compatible, so every serving form (dense, hash, QR, ROBE, hot sharing,
any precision) exports and computes exactly what the runtime computes:

    forward(dense: float32 (B, n_dense), sparse: int (B, slots), -1 pads) -> logits (B,)

It checks its inputs as the runtime does (lowprec.serve.checks, the id bounds of
`QuantizedEmbeddings`): a wrong shape, a batch mismatch, float or bool ids, a NaN/Inf dense feature
or an id outside its table raise (torch.jit.Error) with the runtime's message.

Consumers load with `import torch, fbgemm_gpu` then `torch.jit.load(path)` (set
`torch.backends.quantized.engine = "fbgemm"` as lowprec does).

Writing is atomic: the new artifact (hard links to the existing files, the .pt, and a manifest whose
"files" map covers the .pt) is built in a temporary sibling and swapped in by `fileio.atomic_dir`, so
a crash leaves the old, valid artifact. Export checks the saved module against the runtime first.
"""

import os
import shutil
from pathlib import Path
from typing import Any, List, Tuple

import torch

import lowprec
from lowprec.checkpoint.artifact import MANIFEST, load_artifact, read_manifest, write_manifest
from lowprec.errors import InputError
from lowprec.fileio import atomic_dir, sha256_file
from lowprec.graph import DLRMGraph
from lowprec.serve.checks import check_dense, check_id_matrix
from lowprec.serve.runtime import QuantizedDLRM, QuantizedEmbeddings

TORCHSCRIPT = "model.torchscript.pt"
SIGNATURE = "forward(dense: float32 (B, n_dense), sparse: int64 (B, slots), -1 pads) -> logits (B,)"
CHECK_TOLERANCE = 1e-4


class ServingDLRM(DLRMGraph):
    """The runtime's graph with its embeddings and layers, taking the id matrix (scriptable)."""

    dense_names: List[str]

    def __init__(self, runtime: QuantizedDLRM):
        super().__init__(list(runtime.bottom), list(runtime.top), runtime.embeddings.n_tables)
        self.embeddings: QuantizedEmbeddings = runtime.embeddings
        self.dense_names = list(runtime.dense_names)

    def forward(self, dense: torch.Tensor, sparse: torch.Tensor) -> torch.Tensor:
        batch = check_id_matrix(sparse, self.embeddings.n_slots)  # the runtime's checks, in its order
        return self.logits(check_dense(dense, batch, self.dense_names), self.embeddings(sparse))


def scriptable(runtime: QuantizedDLRM) -> ServingDLRM:
    """A TorchScript-friendly module computing exactly `runtime`'s logits."""
    module = ServingDLRM(runtime)
    module.eval()
    return module


def example_batch(runtime: QuantizedDLRM, rows: int = 64, seed: int = 0) -> Tuple[torch.Tensor, torch.Tensor]:
    """Random dense features and ids in range, with -1 pads in multi-hot slots and one empty row."""
    g = torch.Generator().manual_seed(seed)
    config = runtime.config
    dense = torch.randn(rows, config.dense_in, generator=g)
    cols = []
    for t in config.tables:
        ids = torch.randint(0, t.num_embeddings, (rows, t.hotness), generator=g)
        if t.hotness > 1:
            ids[:, 1:][torch.rand(rows, t.hotness - 1, generator=g) < 0.4] = -1
        ids[0] = -1
        cols.append(ids)
    return dense, torch.cat(cols, dim=1)


def _check(module: Any, runtime: QuantizedDLRM, what: str) -> None:
    dense, sparse = example_batch(runtime)
    with torch.no_grad():
        want = runtime(dense, sparse)
        got = module(dense, sparse)
        # and the fast path: no pads, one id per table
        dense1, sparse1 = example_batch(runtime, seed=1)
        sparse1 = sparse1.clamp(min=0)
        diff = max(float((got - want).abs().max()),
                   float((module(dense1, sparse1) - runtime(dense1, sparse1)).abs().max()))
    if not diff <= CHECK_TOLERANCE:
        raise RuntimeError(f"torchscript export: the {what} module differs from the runtime by {diff:g}")


def _link_or_copy(src: str, dst: str) -> None:
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def _scripted(root: Path) -> Tuple[Any, QuantizedDLRM, dict]:
    runtime, manifest = load_artifact(root)
    scripted = torch.jit.script(scriptable(runtime))
    _check(scripted, runtime, "scripted")
    return scripted, runtime, manifest


def _save(scripted: Any, runtime: QuantizedDLRM, manifest: dict, dest: Path) -> None:
    torch.jit.save(scripted, str(dest / TORCHSCRIPT))
    _check(torch.jit.load(str(dest / TORCHSCRIPT), map_location="cpu"), runtime, "saved")
    manifest["files"] = {**manifest["files"], TORCHSCRIPT: sha256_file(dest / TORCHSCRIPT)}
    manifest["torchscript"] = {
        "file": TORCHSCRIPT, "signature": SIGNATURE, "torch_version": lowprec.TORCH_VERSION,
        "fbgemm_version": lowprec.FBGEMM_VERSION, "needs": "import torch, fbgemm_gpu",
    }
    write_manifest(dest / MANIFEST, manifest)


def add_torchscript(staging_dir: str | Path) -> None:
    """Export in place into an artifact no one can see yet (convert's temporary directory), so
    conversion and export land at --out together or not at all."""
    root = Path(staging_dir)
    _save(*_scripted(root), root)


def export_torchscript(artifact_dir: str | Path) -> Path:
    """Add `model.torchscript.pt` to a verified artifact, covered by its manifest's sha256 map."""
    root = Path(artifact_dir)
    scripted, runtime, manifest = _scripted(root)
    with atomic_dir(root, "artifact") as tmp:
        shutil.copytree(root, tmp, dirs_exist_ok=True, copy_function=_link_or_copy,
                        ignore=lambda d, names: [n for n in names if Path(d) == root
                                                 and n in (MANIFEST, TORCHSCRIPT)])
        _save(scripted, runtime, manifest, tmp)
    return root / TORCHSCRIPT


def load_torchscript(artifact_dir: str | Path) -> torch.jit.ScriptModule:
    """Verify the artifact's hashes (the .pt included) and load its TorchScript module."""
    root = Path(artifact_dir)
    manifest = read_manifest(root)
    if TORCHSCRIPT not in manifest.get("files", {}):
        raise InputError(f"{root}: the artifact has no TorchScript export; add it with "
                         f"`lowprec convert ... --export torchscript`")
    info = manifest.get("torchscript", {})
    if info.get("torch_version") not in (None, lowprec.TORCH_VERSION):
        raise InputError(f"{root / TORCHSCRIPT}: exported with torch {info['torch_version']}, "
                         f"running torch {lowprec.TORCH_VERSION}; re-export with this torch")
    return torch.jit.load(str(root / TORCHSCRIPT), map_location="cpu")
