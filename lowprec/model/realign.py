"""Turn a model trained with unaligned ROBE into an aligned one (lowprec.model.sharing), to fine-tune.

An unaligned ROBE block straddles two TBE rows, so it has no exact serving form; `realign` builds a
copy of the DLRM whose robe tables use align=1, the shared array initialised to the least-squares
aligned projection of the trained one. Fine-tune it (`lowprec.train.train(..., init=...)`).
"""

from __future__ import annotations

import dataclasses

from lowprec.model.dlrm import DLRM
from lowprec.model.embedding import parse_spec
from lowprec.model.sharing import ROBE_STATE, RobeBag, aligned_projection


def realign(model: DLRM) -> DLRM:
    """A copy of a DLRM whose robe tables use align=1, M initialised to `aligned_projection`."""
    tables = []
    for t in model.config.tables:
        kind, opts = parse_spec(t.embedding)
        if kind == "robe":
            opts["align"] = "1"
            t = dataclasses.replace(t, embedding="robe:" + ",".join(f"{k}={v}" for k, v in opts.items()))
        tables.append(t)
    out = DLRM(model.config.replace_tables(tables))
    state = model.state_dict()
    for i, m in enumerate(model.embeddings):
        if isinstance(m, RobeBag) and hasattr(m, "shared"):
            state[f"embeddings.{i}.{ROBE_STATE}"] = aligned_projection(m.array).reshape(-1, 1)
    out.load_state_dict(state)
    return out
