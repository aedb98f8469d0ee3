"""The one error type users see: a single line naming the problem and the fix."""


class UserError(Exception):
    """Bad input or environment; CLIs print ``error: <message>`` and exit 2 instead of a traceback."""
