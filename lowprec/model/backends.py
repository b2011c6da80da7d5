"""The one registry of trainable embedding backends: SPEC kind -> constructor, and the table loader.

`BACKENDS` is a literal (nothing registers itself on import): `dense` (lowprec.model.embedding),
`hash`, `qr`, `robe` (lowprec.model.sharing). `build_table` builds a table's module from its SPEC;
`load_table_module` rebuilds one table from a checkpoint (the shared ROBE array included) for
table-by-table conversion.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from lowprec.errors import InputError
from lowprec.model.config import DLRMConfig, TableConfig
from lowprec.model.embedding import DenseBag, parse_spec
from lowprec.model.sharing import ROBE_STATE, build_hash, build_qr, build_robe, link_shared, robe_array


def _dense(table: TableConfig, dim: int, options: dict[str, str]) -> nn.Module:
    if options:
        raise InputError(f"table {table.name!r}: `dense` takes no options, got {options}")
    return DenseBag(table.num_embeddings, dim)


BACKENDS: dict[str, Callable[[TableConfig, int, dict[str, str]], nn.Module]] = {
    "dense": _dense,
    "hash": build_hash,
    "qr": build_qr,
    "robe": build_robe,
}

__all__ = ["BACKENDS", "build_table", "link_shared", "load_table_module"]


def build_table(table: TableConfig, dim: int) -> nn.Module:
    kind, options = parse_spec(table.embedding)
    if kind not in BACKENDS:
        raise InputError(
            f"table {table.name!r}: unknown embedding backend {kind!r} (known: {sorted(BACKENDS)})"
        )
    return BACKENDS[kind](table, dim, options)


def load_table_module(config: DLRMConfig, index: int, get_tensor: Callable[[str], torch.Tensor]) -> nn.Module:
    """Rebuild logical table `index` from a DLRM state (tensor getter by name), shared array included."""
    tables = config.tables
    if parse_spec(tables[index].embedding)[0] != "robe":
        # Built on the meta device and loaded with assign=True: the checkpoint's tensors become the
        # parameters, so converting never holds a randomly initialised copy of the table as well.
        with torch.device("meta"):
            module = build_table(tables[index], config.embedding_dim)
        prefix = f"embeddings.{index}."
        module.load_state_dict({k: get_tensor(prefix + k) for k in module.state_dict()}, assign=True)
        return module
    module = build_table(tables[index], config.embedding_dim)
    robe = [i for i, t in enumerate(tables) if parse_spec(t.embedding)[0] == "robe"]
    bags = [module if i == index else build_table(tables[i], config.embedding_dim) for i in robe]
    array = robe_array(bags, init=False)
    with torch.no_grad():
        array.bag.weight.copy_(get_tensor(f"embeddings.{robe[0]}.{ROBE_STATE}"))
    module.attach(array, own=index == robe[0])
    return module
