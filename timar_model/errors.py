"""Errors the user can fix (a missing or damaged file, a bad option value).

`timar` prints such an error as one line on stderr and exits with status 2; `timar --debug` shows the
traceback. Raise `UserError` with a message that names the file or option and says what to do.
"""

from __future__ import annotations


class UserError(Exception):
    """An expected failure with a one-line message naming the file or option and the fix."""
