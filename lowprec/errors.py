"""User-facing errors and warnings.

`InputError` is raised for anything the user handed us that we cannot use (a malformed row, an
out-of-range id, a tampered file, a plan naming a missing table). The CLI turns it into exit code 2
with the message as-is, so every message names the file, row, table or layer at fault.

`warn(message)` reports something in the user's input that lowprec worked around and the user
should know about (a window with no rows skipped, a window with one label class): an
`InputWarning`, which the CLI prints on stderr as one `warning: ...` line (rank 0 only).
"""

import warnings


class InputError(Exception):
    """Bad input from the user: message names the place; the CLI exits with code 2."""


class InputWarning(UserWarning):
    """Input lowprec used but the user should look at; the CLI prints `warning: MESSAGE` on stderr."""


def warn(message: str) -> None:
    warnings.warn(message, InputWarning, stacklevel=2)
