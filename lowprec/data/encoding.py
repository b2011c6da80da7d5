"""Encoding fingerprints: how a sparse feature's raw values became ids, so data and model agree.

Every reader records one string per sparse feature in dataset.json (`encodings`), and training
copies it into the model's TableConfig (config.json, and from there every artifact's manifest).
Scoring commands (eval, calibrate, search, drift, compare) compare the model's fingerprints with the
dataset's through `check_compatible`: a dataset whose ids mean something else (a CSV day prepared
with its own vocabulary, a Criteo file hashed into other table sizes) is refused with exit 2.
Files written before fingerprints existed carry none, and a missing fingerprint on either side is
not compared (old files still load).

Fingerprints: `hash:<function>:n=<rows>` for hashed values (the same on every day), and
`vocab:<sha256 of the vocabulary, 16 hex>:n=<rows>` for vocabulary-mapped values (the same only
for data prepared with the same vocabulary: `data prepare --vocab-from DIR`).
"""

from __future__ import annotations

import hashlib
import json
from typing import Any, Iterable

from lowprec.errors import InputError


def hashed(function: str, num_embeddings: int) -> str:
    return f"hash:{function}:n={num_embeddings}"


def vocabulary(values: Iterable[Any], num_embeddings: int) -> str:
    """Fingerprint of an ordered vocabulary (id i = position i)."""
    h = hashlib.sha256()
    for v in values:
        h.update(json.dumps(v, default=str).encode("utf-8") + b"\n")
    return f"vocab:{h.hexdigest()[:16]}:n={num_embeddings}"


def check_encodings(model_encodings: list[str | None], meta: Any, where: str) -> None:
    """Refuse a dataset whose recorded encodings differ from the model's, table by table."""
    for enc, f in zip(model_encodings, meta.sparse):
        if enc is not None and f.encoding is not None and enc != f.encoding:
            raise InputError(
                f"{where}: table {f.name!r} was trained on ids encoded as {enc}, but the dataset encodes "
                f"{f.name!r} as {f.encoding}: the same id means another value. Prepare the data with "
                f"the training data's vocabulary (`lowprec data prepare --vocab-from TRAIN_DATA_DIR`).")
