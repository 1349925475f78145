"""
HTTP/2 (and so the flood guards of L{linkrouter.h2guard}) is part of the default
install. The floods themselves, over real TLS on loopback:
L{tests.integration.test_h2guard}.
"""

from __future__ import annotations

import configparser
from pathlib import Path

from twisted.trial.unittest import SynchronousTestCase

from linkrouter.tls import default_alpn


class DefaultInstallTests(SynchronousTestCase):
    """HTTP/2 is part of C{pip install .}, not an extra."""

    def test_requirements(self) -> None:
        """
        install_requires carries Twisted's http2 extra and h2 (which ALPN's h2 offer
        needs); the old C{http2} extra still resolves, as an alias.
        """
        setup = configparser.ConfigParser()
        setup.read(Path(__file__).resolve().parents[2] / "setup.cfg")
        required = setup["options"]["install_requires"].split()
        [twisted] = [r for r in required if r.startswith("twisted[")]
        self.assertIn("http2", twisted.split("]")[0])
        self.assertTrue(any(r.startswith("h2") for r in required))
        self.assertIn("twisted[http2]", setup["options.extras_require"]["http2"])

    def test_alpn_offers_h2(self) -> None:
        """With the default install's packages, TLS listeners offer h2 first."""
        self.assertEqual(default_alpn(), (b"h2", b"http/1.1"))
