"""The one error type users see: a single line naming the problem and the fix."""


class UserError(Exception):
    """Bad input or environment; CLIs print ``error: <message>`` and exit 2 instead of a traceback."""


def one_line(exc: BaseException, limit: int = 200) -> str:
    """An exception's message on one line (whitespace collapsed, cut at `limit`), for a UserError's text.

    A message without words gives the exception's type name, so the parenthesis it goes into is never empty.
    """
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."


def first_line(exc: BaseException) -> str:
    """The first line of an exception's message (an engine's traceback-like text), or its type name."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
