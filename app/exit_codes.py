"""The exit statuses every command line and stage process ends with (the one table of them)."""

from __future__ import annotations

EXIT_OK = 0
EXIT_FAILED = 1  # a bug or an environment failure: the message says which stage
EXIT_USER_ERROR = 2  # bad input: `error: ...` names the problem and the fix
EXIT_INTERRUPTED = 130  # 128 + SIGINT, as shells report a Ctrl-C
EXIT_TERMINATED = 143  # 128 + SIGTERM
