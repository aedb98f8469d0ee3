"""Camera and server URLs made safe to print: credentials never reach logs or error messages."""

from __future__ import annotations

import re

_SECRET_QUERY = re.compile(
    r"(?i)([?&;](?:user(?:name)?|login|pass(?:word|wd)?|pwd|token|access_token|api_?key|key|auth|secret)=)"
    r"[^&;#]*"
)


def mask_url(url: str) -> str:
    """`url` safe to print: user:password and password-like query values replaced by ***.

    A password holding an unescaped '/' still hides, since everything before the last '@' ahead of the
    query is taken for credentials (at worst a path holding an '@' hides the host too).
    """
    scheme, sep, rest = url.partition("://")
    if not sep:
        return url
    head, qmark, query = rest.partition("?")
    if "@" in head:
        head = "***@" + head.rsplit("@", 1)[1]
    return _SECRET_QUERY.sub(r"\1***", f"{scheme}://{head}{qmark}{query}")
