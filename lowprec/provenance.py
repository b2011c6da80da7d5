"""Provenance checks between the files a command pairs up: was this artifact converted from this model?

`drift` and `compare` score a quantized candidate against its float reference; an artifact converted
from another model gives a spurious gap (an alarm, exit 1) that says nothing about quantization. The
artifact's manifest records the sha256 of the float weights it was converted from
(`source.sha256`); `check_converted_from` refuses a pair whose hashes differ (InputError, exit 2)
unless the user overrides it with the command's flag. `check_same_float` does the same for a
float candidate (drift): its weights must be the reference's.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from lowprec.errors import InputError


def check_converted_from(reference: str | Path, reference_sha: str, candidate: str | Path,
                         manifest: dict[str, Any] | None, flag: str) -> None:
    """Refuse a candidate artifact whose manifest does not name `reference_sha` as its source.

    `manifest` None means the candidate is a float model: nothing is recorded to compare."""
    if manifest is None:
        return
    source = manifest.get("source") if isinstance(manifest.get("source"), dict) else {}
    recorded = source.get("sha256")
    if recorded == reference_sha:
        return
    what = ("records no source model sha256" if recorded is None
            else f"was converted from model sha256 {recorded}")
    from lowprec.checkpoint.float_model import identity_note

    raise _unrelated(reference, reference_sha, candidate, what + identity_note(reference, recorded), flag)


def check_same_float(reference: str | Path, reference_sha: str, candidate: str | Path, candidate_sha: str,
                     flag: str) -> None:
    """Refuse a float candidate whose weights are not the reference's (a copy of it is fine): two
    different float models differ by more than any quantization, so every gap would alarm."""
    if candidate_sha != reference_sha:
        raise _unrelated(reference, reference_sha, candidate, f"is a float model with weights sha256 "
                         f"{candidate_sha}", flag)


def _unrelated(reference: str | Path, reference_sha: str, candidate: str | Path, what: str, flag: str) -> InputError:
    return InputError(f"--candidate {candidate} {what}, but --reference {reference} has sha256 "
                      f"{reference_sha}: the gap would measure two different models, not quantization. "
                      f"Pass {flag} to compare them anyway.")
