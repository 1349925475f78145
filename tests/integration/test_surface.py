"""
C{--allow-upstream} from flags and from C{LINKROUTER_ALLOW_UPSTREAM}, as C{twistd} reads
them in a real process. The surface itself: L{tests.unit.test_surface}.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from twisted.python import usage
from twisted.trial.unittest import SynchronousTestCase

from linkrouter.config import ConfigError, resolve
from linkrouter.tap import Options

from ..unit.test_tap import REPO
from .test_tap import RUN_TIMEOUT, TWISTD


class OptionTests(SynchronousTestCase):
    """C{--allow-upstream} from flags and from C{LINKROUTER_ALLOW_UPSTREAM}."""

    def parsed(self, args: list[str], environ: dict[str, str] | None = None) -> Options:
        options = Options(environ=environ or {})
        options.parseOptions(args)
        return options

    def test_repeatable_flag(self) -> None:
        """Each flag adds a rule, in order."""
        options = self.parsed(["--allow-upstream", "GET /v1/files/*",
                               "--allow-upstream", "DELETE /v1/files/{id}"])
        self.assertEqual(options.config.allow_upstream,
                         ("GET /v1/files/*", "DELETE /v1/files/{id}"))

    def test_environment(self) -> None:
        """The variable is comma-separated; flags win over it."""
        env = {"LINKROUTER_ALLOW_UPSTREAM": "GET /v1/files/*, GET /v1/messages/batches/*"}
        self.assertEqual(self.parsed([], env).config.allow_upstream,
                         ("GET /v1/files/*", "GET /v1/messages/batches/*"))
        self.assertEqual(
            self.parsed(["--allow-upstream=POST /v1/files"], env).config.allow_upstream,
            ("POST /v1/files",))

    def test_default_empty(self) -> None:
        """Nothing given: nothing more is open."""
        self.assertEqual(self.parsed([]).config.allow_upstream, ())

    def test_bad_rule(self) -> None:
        """A bad rule (flag or variable) is a usage error naming the option."""
        error = self.assertRaises(usage.UsageError, self.parsed,
                                  ["--allow-upstream=GET /api/oauth/profile"])
        self.assertIn("--allow-upstream", str(error))
        error = self.assertRaises(ConfigError, resolve, {},
                                  {"LINKROUTER_ALLOW_UPSTREAM": "GET /v1/files/*,nonsense"})
        self.assertIn("nonsense", str(error))

    def test_help(self) -> None:
        """--help shows the option, its variable and what opening a path shares."""
        text = " ".join(str(Options(environ={})).split())
        self.assertIn("--allow-upstream", text)
        self.assertIn("LINKROUTER_ALLOW_UPSTREAM", text)
        self.assertIn("every token holder", text.lower())

    def test_twistd_one_line(self) -> None:
        """A bad rule stops C{twistd linkrouter} with one line naming the option."""
        home = Path(self.mktemp()).resolve()
        home.mkdir()
        result = subprocess.run(
            [sys.executable, "-c", TWISTD, "-n", "linkrouter",
             "--allow-upstream", "GET /v1/../oauth"],
            cwd=home, capture_output=True, text=True, timeout=RUN_TIMEOUT, check=False,
            env={"PATH": "/usr/bin:/bin", "HOME": str(home), "PYTHONPATH": str(REPO),
                 "LINKROUTER_LISTEN": "tcp:0:interface=127.0.0.1"},
        )
        self.assertNotEqual(result.returncode, 0)
        lines = result.stderr.splitlines()
        self.assertEqual(len(lines), 1, result.stderr)
        self.assertIn("--allow-upstream", lines[0])
        self.assertNotIn("Traceback", result.stderr + result.stdout)
