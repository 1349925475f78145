# -*- test-case-name: tests.integration.test_outage -*-
"""
One line when the token store stops answering a poller, one when it answers again:
an outage is two log lines, not one a second.
"""

from __future__ import annotations

from typing import Any

from attrs import define
from twisted.logger import Logger


def reason(error: BaseException) -> str:
    """The first line of an error, without a traceback (store errors carry no password)."""
    text = str(error).strip()
    return text.splitlines()[0][:300] if text else type(error).__name__


@define
class Outage:
    """
    The state of one poller's access to the store, logged when it changes.

    @ivar what: the poller, e.g. "revocations" or "usage".
    @ivar consequence: what the router does meanwhile (said in the "down" line).
    @ivar down_since: clock time of the first failure of the current outage, or None.
    """

    clock: Any
    what: str
    consequence: str
    down_since: float | None = None
    last_reason: str = ""
    _log = Logger(namespace="linkrouter")

    def failed(self, error: BaseException) -> None:
        self.last_reason = reason(error)
        if self.down_since is not None:
            return
        self.down_since = self.clock.seconds()
        self._log.warn("The token store is not answering ({what}): {reason}; {consequence}",
                       what=self.what, reason=self.last_reason, consequence=self.consequence)

    def answered(self) -> None:
        if self.down_since is None:
            return
        down = self.clock.seconds() - self.down_since
        self.down_since = None
        self._log.info("The token store answers again ({what}) after {down:.0f} s",
                       what=self.what, down=down)
