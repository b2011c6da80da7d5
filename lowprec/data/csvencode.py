"""Categorical encoders of the CSV reader: hashing, vocabularies, and reusing an earlier vocabulary.

Hashing (`encoding = "hash"`): id = 1 + blake2b-64(utf-8 value) mod (num_embeddings - 1); id 0 is an
empty cell. Distinct values are counted (up to COLLISION_CAP per column) with the distinct ids
they hash to, so provenance records how many values share an id (`hash_collisions`).

Vocabulary (`encoding = "vocab"`): ids in order of first appearance from 1; id 0 is an empty cell,
or a new value once a capped vocabulary is full. With a frozen vocabulary (`data prepare
--vocab-from DIR`: the earlier dataset's `vocab_NAME.json`), known values keep their ids and an
unseen value goes to the reserved row 0, counted in provenance (`vocab_unseen`), so a second day
prepared on its own means the same thing by every id as the first.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np

from lowprec.data import encoding
from lowprec.errors import InputError
from lowprec.memory import headroom_bytes

COLLISION_CAP = 1 << 20  # distinct values remembered per hashed column for the collision count
# An uncapped vocabulary lives in memory while the data is read (~150 B a value in Python) and becomes
# a table of as many rows: past this many values without `num_embeddings` the run stops with advice,
# before a user-id column on a day of logs takes the machine's memory. `num_embeddings` lifts it.
UNCAPPED_VOCAB_LIMIT = 20_000_000
VALUE_BYTES = 150  # a vocabulary entry in memory: the str, its dict slot and the int id (measured ~125 B)
# A capped vocabulary (or several) may still outgrow the machine: every this many new values the
# reader asks for the memory left, and stops while the dict can still grow once more (it doubles)
# and the rest of the run (batches, the vocabulary file) has MEMORY_RESERVE.
MEMORY_CHECK_EVERY = 1 << 18
MEMORY_RESERVE = 128 << 20
HASH_FUNCTION = "blake2b-64-utf8"


class Encoder:
    """Maps one categorical cell to `hotness` ids (padded with -1)."""

    def __init__(self, col: Any, frozen: tuple[list[str], int] | None = None):
        """`frozen`: (values of ids 1.., num_embeddings) of an earlier dataset's vocabulary."""
        self.col = col
        self.frozen = frozen is not None
        self.frozen_rows = frozen[1] if frozen else None
        self.vocab: dict[str, int] = {v: i + 1 for i, v in enumerate(frozen[0] if frozen else [])}
        self.oov = self.truncated = self.unseen = 0
        self.hash_values: dict[str, int] = {}
        self.hash_capped = False
        self.cap = col.num_embeddings  # None in a share's encoder: `absorb` applies the cap

    def fresh(self) -> "Encoder":
        """This column's encoder with nothing read yet, for a share of the input: a frozen vocabulary
        is shared, not copied; a growing one numbers every distinct value of the share, uncapped
        (a value the share finds past the cap may be known to the reader before it; `absorb` caps)."""
        new = Encoder(self.col)
        if self.frozen:
            new.frozen, new.frozen_rows, new.vocab = True, self.frozen_rows, self.vocab
        else:
            new.cap = None
        return new

    def ids(self, cell: str) -> list[int]:
        col = self.col
        if col.sep is None:
            v = cell.strip()
            return [self._id(v) if v else 0]
        items = [v for v in (s.strip() for s in cell.split(col.sep)) if v]
        if len(items) > col.hotness:
            self.truncated += 1
            items = items[: col.hotness]
        return [self._id(v) for v in items] + [-1] * (col.hotness - len(items))

    def _id(self, v: str) -> int:
        if self.col.encoding == "hash":
            got = self.hash_values.get(v)  # a value seen before (kept for the collision count): no hashing
            if got is not None:
                return got
            h = int.from_bytes(hashlib.blake2b(v.encode("utf-8", "surrogateescape"), digest_size=8).digest(),
                               "little")
            got = 1 + h % (self.col.num_embeddings - 1)
            if len(self.hash_values) < COLLISION_CAP:
                self.hash_values[v] = got
            else:
                self.hash_capped = True
            return got
        got = self.vocab.get(v)
        if got is None:
            if self.frozen:
                self.unseen += 1
                return 0
            if self.cap is not None and len(self.vocab) + 1 >= self.cap:
                self.oov += 1
                return 0
            if self.col.num_embeddings is None and len(self.vocab) >= UNCAPPED_VOCAB_LIMIT:
                raise InputError(
                    f"[categorical.{self.col.name}]: the vocabulary of column {self.col.column!r} passed "
                    f"{UNCAPPED_VOCAB_LIMIT:,} distinct values and the schema sets no `num_embeddings` cap; it is "
                    f"held in memory while reading (~{UNCAPPED_VOCAB_LIMIT * VALUE_BYTES / 1e9:.0f} GB so far) and would "
                    f"become a table of as many rows. Set num_embeddings (values past it share id 0) or use "
                    f'encoding = "hash" (nothing was written)')
            got = self.vocab[v] = len(self.vocab) + 1
            if got % MEMORY_CHECK_EVERY == 0:
                self._check_memory()
        return got

    def _check_memory(self) -> None:
        left = headroom_bytes()
        if left is None or left >= sys.getsizeof(self.vocab) + MEMORY_RESERVE:
            return
        ways = ('Set a smaller num_embeddings (values past it share id 0), use encoding = "hash", or run on a '
                'machine with more memory' if self.cap is not None or self.col.num_embeddings is None else
                # a part read on several processes numbers every distinct value until the merge caps them
                "This process reads one part of the input and keeps every distinct value of it until the merge "
                "applies num_embeddings: use smaller parts ($LOWPREC_CSV_PART_BYTES; a gzip file is one part, "
                'so split it), encoding = "hash", or fewer processes a machine')
        raise InputError(
            f"[categorical.{self.col.name}]: the vocabulary of column {self.col.column!r} holds {len(self.vocab):,} "
            f"distinct values (~{len(self.vocab) * VALUE_BYTES / 1e9:.1f} GB in memory) and only "
            f"{left / 1e9:.1f} GB of memory is left to this process (the machine's available memory, or its "
            f"data limit), too little for it to grow further. {ways} (nothing was written)")

    @property
    def num_embeddings(self) -> int:
        return self.col.num_embeddings or self.frozen_rows or len(self.vocab) + 1

    @property
    def fingerprint(self) -> str:
        if self.col.encoding == "hash":
            return encoding.hashed(HASH_FUNCTION, self.num_embeddings)
        return encoding.vocabulary(self.vocab, self.num_embeddings)

    @property
    def numbers_locally(self) -> bool:
        """True for a vocabulary that grows while reading: a share of the input read by another
        process (lowprec.data.parts) numbers its values locally, and `absorb` renumbers them."""
        return self.col.encoding == "vocab" and not self.frozen

    def share_state(self) -> dict[str, Any]:
        """What `absorb` needs of this encoder after it read one share of the input."""
        return {"oov": self.oov, "truncated": self.truncated, "unseen": self.unseen,
                "vocab": list(self.vocab) if self.numbers_locally else [],
                "hash_values": list(self.hash_values), "hash_ids": list(self.hash_values.values()),
                "hash_capped": self.hash_capped}

    def absorb(self, state: dict[str, Any], counts: np.ndarray) -> np.ndarray | None:
        """Take in another encoder's `share_state` (a share read after everything this one read):
        the global id of each of its local ids (None when its ids are global already).

        `counts[j]`: rows' occurrences of local id j. Values are renumbered in the share's order of
        first appearance, after this encoder's own, which is the order one reader of the whole
        input gives. A capped vocabulary's overflow is counted per occurrence, as one reader counts
        it: a value that finds the vocabulary full here is out for all its occurrences."""
        self.oov += state["oov"]
        self.truncated += state["truncated"]
        self.unseen += state["unseen"]
        for v, i in zip(state["hash_values"], state["hash_ids"]):
            if v in self.hash_values:
                continue
            if len(self.hash_values) >= COLLISION_CAP:
                self.hash_capped = True
                break
            self.hash_values[v] = i
        self.hash_capped |= state["hash_capped"]
        if not self.numbers_locally:
            return None
        table = np.zeros(len(state["vocab"]) + 1, np.int32)
        for j, v in enumerate(state["vocab"], start=1):
            before = self.oov
            table[j] = self._id(v)
            if self.oov > before:
                self.oov += int(counts[j]) - 1
        return table

    def collisions(self) -> dict[str, Any]:
        """Distinct values seen, distinct ids they took, and the values beyond the first on each id
        (distinct values minus distinct ids: two values on one id count 1)."""
        values, ids = len(self.hash_values), len(set(self.hash_values.values()))
        return {"distinct_values": values, "distinct_ids": ids, "colliding_values": values - ids,
                "counted_all_values": not self.hash_capped}


def write_vocabulary(path: Path, values: Any) -> None:
    """`vocab_NAME.json`: the JSON list ["<missing or unknown>", *values], written in slices so a
    vocabulary of 100M values never becomes one string in memory (same bytes as json.dumps)."""
    it = iter(values)
    with open(path, "w", encoding="utf-8") as f:
        f.write('["<missing or unknown>"')
        while chunk := list(itertools.islice(it, 1 << 16)):
            f.write(", " + json.dumps(chunk)[1:-1])
        f.write("]\n")


def load_vocabularies(src: Path, schema: Any) -> dict[str, tuple[list[str], int]]:
    """The vocabularies of the dataset at `src` for the schema's vocab columns (--vocab-from)."""
    from lowprec.data.dataset import Dataset

    meta = Dataset(src).meta
    files = meta.provenance.get("vocabularies") or {}
    sizes = dict(zip(meta.sparse_names, meta.num_embeddings))
    encodings = {f.name: f.encoding for f in meta.sparse}
    out = {}
    for col in schema.categorical:
        if col.encoding != "vocab":
            continue
        name = files.get(col.name) if isinstance(files, dict) else None
        if not isinstance(name, str) or Path(name).name != name:
            raise InputError(f"--vocab-from {src}: the dataset has no vocabulary for {col.name!r}")
        path = src / name
        try:
            vocab = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise InputError(f"{path}: unreadable vocabulary ({exc})") from exc
        if not (isinstance(vocab, list) and vocab and all(isinstance(v, str) for v in vocab)):
            raise InputError(f"{path}: a vocabulary must be a JSON list of strings")
        if col.num_embeddings is not None and col.num_embeddings != sizes.get(col.name):
            raise InputError(f"--vocab-from {src}: {col.name!r} has {sizes.get(col.name)} rows there, the "
                             f"schema says num_embeddings = {col.num_embeddings}")
        if col.name not in sizes or len(vocab) > sizes[col.name]:
            raise InputError(f"{path}: {len(vocab)} entries exceed {col.name!r}'s {sizes.get(col.name)} rows")
        if len(set(vocab[1:])) != len(vocab) - 1:  # (entry 0 is a label: a data value may read the same)
            raise InputError(f"{path}: the vocabulary lists a value twice; it was edited after `data prepare` "
                             f"wrote it")
        recorded = encodings.get(col.name)
        if recorded is not None and encoding.vocabulary(vocab[1:], sizes[col.name]) != recorded:
            raise InputError(f"{path}: this vocabulary is not the one {src}'s data was encoded with (dataset.json "
                             f"records {recorded}); it was edited or replaced after `data prepare` wrote it")
        out[col.name] = (vocab[1:], sizes[col.name])  # entry 0 is the reserved "<missing or unknown>" row
    return out
