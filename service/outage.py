"""One log line when a dependency (the database, the broker) stops answering, one when it is back.

During an outage every request fails the same way; a traceback per request would bury the one
line an operator needs. The first failure logs a warning with its reason, the rest only count,
and the first success after them logs how long it lasted and how many requests it cost.
"""

from __future__ import annotations

import logging
import threading
import time


class OutageLog:
    def __init__(self, what: str, logger: logging.Logger, *, meanwhile: str = "") -> None:
        self.what = what
        # What the service does until it is back, said once in the outage line.
        self._meanwhile = f"; {meanwhile}" if meanwhile else ""
        self._log = logger
        self._lock = threading.Lock()
        self._down_since: float | None = None
        self._failures = 0

    @property
    def down(self) -> bool:
        return self._down_since is not None

    def failed(self, exc: BaseException) -> None:
        with self._lock:
            first = self._down_since is None
            if first:
                self._down_since = time.monotonic()
            self._failures += 1
        if first:
            self._log.error("%s unreachable: %s%s", self.what, one_line(exc), self._meanwhile)

    def succeeded(self) -> None:
        if self._down_since is None:  # the common case: no lock taken
            return
        with self._lock:
            if self._down_since is None:
                return
            lasted = time.monotonic() - self._down_since
            failures = self._failures
            self._down_since = None
            self._failures = 0
        self._log.warning(
            "%s reachable again after %.1f s (%d failed attempt(s))", self.what, lasted, failures
        )


def one_line(exc: BaseException) -> str:
    """The exception's type and the first line of its message (drivers add SQL and hints)."""
    text = str(getattr(exc, "orig", None) or exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__
