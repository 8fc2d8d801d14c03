"""Errors a user can fix (a setting, a path, a file in the way), and how the CLI ends on them.

Each is one line naming what to fix; ``relay.cli`` prints it on stderr, after
``ci-relay:``, and exits with the error's ``exit_status``. Nothing else ends a command that
way: any other exception is a bug, with its traceback.
"""

from __future__ import annotations

EXIT_USAGE = 2


class UserError(Exception):
    """Something the user can fix; the message says what, in one line."""

    exit_status = EXIT_USAGE
