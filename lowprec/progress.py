"""The one progress convention of the library.

- `Update`: `update(n)` advances the current bar by n (rows, tables, options, ...).
- `Stages`: `stages(name, total, unit)` starts the next stage of a multi-stage job (its own bar)
  and returns that stage's `Update`; `total` may be None when unknown.
Single-stage functions (train, calibrate, evaluate, convert, validate) take `progress: Update | None`;
multi-stage jobs (data synth/prepare, search, drift, demo) take `stages: Stages | None`.
The CLI passes tqdm bars on stderr (lowprec.cli._common.StageBars, progress_bar); library callers
may pass nothing.
"""

from typing import Any, Callable, Optional

Update = Callable[[int], Any]
Stages = Callable[[str, Optional[int], str], Update]


def stage(stages: Stages | None, name: str, total: int | None, unit: str = "rows") -> Update | None:
    """The update of a new stage, or None when the caller shows no progress."""
    return stages(name, total, unit) if stages is not None else None
