"""
Messages the router builds around a connection failure's text end in one full stop, not
two. The status line's reason phrase and the 502's wording from a running router:
L{tests.integration.test_wording}.
"""

from __future__ import annotations

from twisted.internet import error
from twisted.trial.unittest import SynchronousTestCase
from twisted.web._newclient import ResponseNeverReceived

from linkrouter.errors import short_reason


class FullStopTests(SynchronousTestCase):
    """Messages built around a connection failure's text end in one full stop."""

    def test_short_reason(self) -> None:
        """
        Twisted's connection errors end their text with a full stop; the short reason
        the router puts inside its own sentences does not.
        """
        for failure in (error.ConnectionRefusedError(), error.TimeoutError(),
                        error.DNSLookupError("upstream.invalid"),
                        ResponseNeverReceived([error.ConnectionLost()])):
            reason = short_reason(failure)
            self.assertTrue(reason, failure)
            self.assertFalse(reason.endswith("."), reason)
