"""The torch / fbgemm_gpu pairing check.

fbgemm_gpu ships native libraries compiled against one torch release; loading it beside another
fails with an undefined-symbol error from the dynamic loader. We turn that into one readable message
naming both installed versions and the pair that works.
"""

from __future__ import annotations

import importlib.metadata as md

SUPPORTED_PAIRS = {"2.13": "1.8.0"}  # torch major.minor -> fbgemm-gpu-cpu version


def _dist_version(name: str) -> str:
    for dist in (name, name.replace("-cpu", "")):
        try:
            return md.version(dist)
        except md.PackageNotFoundError:
            continue
    return "not installed"


def _advice(torch_version: str, fbgemm_version: str) -> str:
    pairs = ", ".join(f"torch=={t}.* with fbgemm-gpu-cpu=={f}" for t, f in SUPPORTED_PAIRS.items())
    return (
        f"lowprec needs a torch / fbgemm_gpu pair that loads together; found torch {torch_version} "
        f"and fbgemm-gpu-cpu {fbgemm_version}. Install a supported pair: {pairs} "
        f"(pip install 'torch==2.13.0' 'fbgemm-gpu-cpu==1.8.0')."
    )


def check_torch_fbgemm() -> tuple[str, str]:
    """Import torch and fbgemm_gpu; raise ImportError with a clear message when they do not pair."""
    try:
        import torch
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError(_advice("not installed", _dist_version("fbgemm-gpu-cpu"))) from exc
    torch_version = torch.__version__
    fbgemm_version = _dist_version("fbgemm-gpu-cpu")
    try:
        import fbgemm_gpu  # noqa: F401  (registers torch.ops.fbgemm)
        import fbgemm_gpu.split_table_batched_embeddings_ops_inference  # noqa: F401
    except (ImportError, OSError, RuntimeError, AttributeError) as exc:
        raise ImportError(f"{_advice(torch_version, fbgemm_version)} Loader said: {exc}") from exc
    major_minor = ".".join(torch_version.split("+")[0].split(".")[:2])
    expected = SUPPORTED_PAIRS.get(major_minor)
    if expected is not None and fbgemm_version not in (expected, "not installed"):
        raise ImportError(_advice(torch_version, fbgemm_version))
    return torch_version, fbgemm_version


def quiet_torchrec_internals() -> None:
    """TorchRec's KeyedJaggedTensor asks torch.fx.is_fx_tracing(), which logs a deprecation line
    (W... is_fx_tracing will return true ...) once per process (once per rank as [rank0]/[rank1]
    lines): TorchRec's to change, not the user's concern. Called where lowprec runs TorchRec code
    (multi-process training, the TorchRec export's check)."""
    import logging

    logging.getLogger("torch.fx._symbolic_trace").setLevel(logging.ERROR)
