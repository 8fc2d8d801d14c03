"""The root of the relay's own exceptions, and the one a user can fix.

Here, in the package everything else may import, because it is the one place every part
can reach: ``relay.contract`` imports nothing outside itself and the runner imports only
``relay.contract``, so a root anywhere else would be out of their reach. It imports nothing,
so the runner stays light.

Every exception the relay defines derives from ``RelayError``; any other exception that ends
a command or the daemon is a bug, with its traceback. A ``UserError`` ends a command with one
line on stderr, after ``ci-relay:``, and the error's ``exit_status`` (``relay.cli``; the
runner's ``emit`` says ``ci-relay: emit:`` and exits 2 alike).
"""

from __future__ import annotations

EXIT_USAGE = 2


class RelayError(Exception):
    """An exception the relay raises on purpose, to be caught by its callers or shown."""


class UserError(RelayError):
    """Something the user can fix (a setting, a flag, a path, a file in the way); the
    message says what, in one line."""

    exit_status = EXIT_USAGE
