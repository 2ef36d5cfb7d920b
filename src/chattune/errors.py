"""The one exception type for bad user input.

The CLI prints `str(error)` as a single line and exits with code 2 (a traceback only with --debug), so every
message must say what was wrong, where (file:line, column, field) and what to do instead.
"""


class InputError(Exception):
    """Bad input from the user: a missing file, wrong columns, a malformed line, an empty dataset."""
