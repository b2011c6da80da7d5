"""User-facing errors.

`InputError` is raised for anything the user handed us that we cannot use (a malformed row, an
out-of-range id, a tampered file, a plan naming a missing table). The CLI turns it into exit code 2
with the message as-is, so every message names the file, row, table or layer at fault.
"""


class InputError(Exception):
    """Bad input from the user: message names the place; the CLI exits with code 2."""
