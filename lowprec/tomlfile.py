"""The TOML files a user writes (recipes, CSV schemas, drift configs), read one way.

A missing file, one that is not UTF-8 TOML, or one that cannot be read is an InputError naming the
file; a UTF-8 byte-order mark (Notepad saves one) is read past, as `fileio.read_json` does.
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

from lowprec.errors import InputError


def read_toml(path: str | Path, what: str) -> dict[str, Any]:
    """The TOML document at `path`, `what` naming it in errors ("recipe", "schema file", ...)."""
    path = Path(path)
    try:  # (not is_file() first: a named pipe, or `<(...)` in a shell, is a file to read too)
        return tomllib.loads(path.read_text(encoding="utf-8-sig"))
    except FileNotFoundError:
        raise InputError(f"{what} not found: {path}") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise InputError(f"{path}: not a valid UTF-8 TOML {what} ({exc})") from exc
    except OSError as exc:
        raise InputError(f"{path}: cannot read the {what} ({exc.strerror})") from exc
