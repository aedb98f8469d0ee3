"""The one error type users see: a single line naming the problem and the fix."""


class UserError(Exception):
    """Bad input or environment; CLIs print ``error: <message>`` and exit 2 instead of a traceback."""


def one_line(exc: BaseException, limit: int | None = 200, *, typed: bool = False) -> str:
    """An exception's message on one line (whitespace collapsed, cut at `limit`; None: never cut), for a
    UserError's text or a stage's failure report.

    `typed` prefixes the type (`KeyError: 'x'`) of anything but a UserError, whose message is written for the
    user; an unexpected exception's type is half its news. A message without words gives the exception's
    type name, so the parenthesis it goes into is never empty.
    """
    words = " ".join(str(exc).split())
    name = type(exc).__name__
    if not words:
        text = name
    elif typed and not isinstance(exc, UserError):
        text = f"{name}: {words}"
    else:
        text = words
    return text if limit is None or len(text) <= limit else text[: limit - 3] + "..."


def first_line(exc: BaseException) -> str:
    """The first line of an exception's message (an engine's traceback-like text), or its type name."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
