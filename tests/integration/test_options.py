"""
The layers import one way only (tap -> service -> resources -> collaborators), checked
in a fresh Python process. The options table: L{tests.unit.test_options}.
"""

from __future__ import annotations

import subprocess
import sys

from twisted.trial.unittest import SynchronousTestCase

from ..unit.test_options import PACKAGE, REPO, _imports


class LayerTests(SynchronousTestCase):
    """Nothing imports upward: tap -> service -> resources -> collaborators."""

    def test_nothing_imports_the_top(self) -> None:
        """Only the CLI imports the tap; only the tap imports the service; nothing
        imports the CLI."""
        # linkrouter.worker is the entry point of a --workers process, as tap is twistd's.
        allowed = {"linkrouter.tap": {"cli", "worker"}, "linkrouter.service": {"tap", "worker"},
                   "linkrouter.cli": set()}
        for path in PACKAGE.glob("*.py"):
            for top, who in allowed.items():
                if top in _imports(path):
                    self.assertIn(path.stem, who, f"{path.name} imports {top}")

    def test_low_level_modules_skip_config(self) -> None:
        """Collaborators take their defaults from L{linkrouter.defaults} and times from
        L{linkrouter.timefmt}: none imports the configuration or the token authority
        for them."""
        composers = {"config", "state", "tap", "cli", "clidoctor", "service", "router",
                     "listeners",
                     # --workers: the supervisor, its start-up and sockets, the worker's tap
                     "workers", "workerstart", "workersockets", "worker"}
        for path in PACKAGE.glob("*.py"):
            if path.stem in composers:
                continue
            self.assertNotIn("linkrouter.config", _imports(path), path.name)
        for name in ("credentials", "store", "accounts", "admin", "refresh"):
            source = (PACKAGE / f"{name}.py").read_text(encoding="utf-8")
            self.assertNotRegex(source, r"from linkrouter\.tokens import [^\n]*isoformat",
                                name)

    def test_cli_parses_without_the_daemon(self) -> None:
        """Importing the console script (and parsing its flags) loads no service,
        resource, proxy or upstream module."""
        code = ("import sys, linkrouter.cli as c; o = c.Options({'HOME': '/nonexistent'}); "
                "o.parseOptions(['tokens', 'list']); "
                "print(' '.join(sorted(m for m in sys.modules if m.startswith('linkrouter'))))")
        loaded = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True,
                                text=True, timeout=60, check=True).stdout.split()
        for heavy in ("service", "resource", "proxy", "upstream", "relay", "router",
                      "listeners", "accounts", "admin"):
            self.assertNotIn(f"linkrouter.{heavy}", loaded)
