"""
Tests for L{linkrouter.options}: one table gives C{--help}, the environment variables,
the defaults and the parsers; the README's options table lists every row; the daemon's
and the tests' paths through L{linkrouter.tap.makeService} are the same. The import
layers, checked in a fresh interpreter: L{tests.integration.test_options}.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path
from typing import Any

from twisted.internet.testing import MemoryReactorClock
from twisted.trial.unittest import SynchronousTestCase

from linkrouter import options as o
from linkrouter.config import resolve
from linkrouter.parsing import ConfigError
from linkrouter.tap import Options, makeService

REPO = Path(__file__).resolve().parents[2]
PACKAGE = REPO / "linkrouter"


def help_text() -> str:
    return " ".join(str(Options(environ={})).split())


def readme_options_table() -> str:
    """
    The README's options table as text; a name cut over two lines (after C{-} or C{_})
    is also given whole.
    """
    text = (REPO / "README.rst").read_text(encoding="utf-8")
    section = text.split("\nOptions\n=======\n", 1)[1]
    borders = [m.start() for m in re.finditer(r"^=+(  +=+)+$", section, re.MULTILINE)]
    lines = section[borders[1]:borders[2]].splitlines()[1:]
    starts = [m.start() for m in re.finditer(r"=+", section[borders[0]:].splitlines()[0])]
    found: list[str] = []
    above = [""] * len(starts)
    for line in lines:
        for column, start in enumerate(starts):
            end = starts[column + 1] if column + 1 < len(starts) else None
            cell = line[start:end].strip().replace("``", "")
            if cell and above[column].endswith(("-", "_")):
                found.append(above[column].split()[-1] + cell.split()[0])
            found.append(cell)
            above[column] = cell
    return " ".join(found)


class TableTests(SynchronousTestCase):
    """Every row of the table reaches --help, the README and L{resolve}."""

    def test_help_lists_every_option(self) -> None:
        """--help shows each option's flag, every environment variable and its default."""
        text = help_text()
        for option in o.OPTIONS:
            self.assertIn(option.flag.lstrip("-"), text)
            names = option.env if isinstance(option, o.Option) else (option.env,)
            for name in names:
                self.assertIn(f"env: {name}", text)
            shown = getattr(option, "shown", None)
            if shown:
                # --help wraps at hyphens too: compare without any whitespace.
                self.assertIn("".join(f"default {shown}".split()), "".join(text.split()),
                              option.name)

    def test_readme_table_lists_every_option(self) -> None:
        """README.rst's options table names every option and its variable."""
        table = readme_options_table()
        for option in o.OPTIONS:
            self.assertIn(option.flag, table)
            names = option.env if isinstance(option, o.Option) else (option.env,)
            for name in names:
                self.assertIn(name, table, option.name)

    def test_keys_unique(self) -> None:
        """No two rows share a flag, a key or a variable."""
        flags = [option.flag for option in o.OPTIONS]
        keys = [option.key for option in o.OPTIONS]
        names = [n for option in o.OPTIONS
                 for n in (option.env if isinstance(option, o.Option) else (option.env,))]
        for values in (flags, keys, names):
            self.assertEqual(len(values), len(set(values)))

    def test_flag_beats_variable_beats_default(self) -> None:
        """For every option with a value: the flag wins, then the variable, then the
        default, each read through the same row."""
        row = o.MAX_BODY_SIZE
        self.assertEqual(row.read({}, {}), row.default)
        self.assertEqual(row.read({}, {row.env[0]: "1k"}), 1024)
        self.assertEqual(row.read({row.key: "2k"}, {row.env[0]: "1k"}), 2048)

    def test_parser_names_the_flag(self) -> None:
        """A bad value from the environment is reported under the option's flag."""
        error = self.assertRaises(ConfigError, o.UPSTREAM_TIMEOUT.read, {},
                                  {"LINKROUTER_UPSTREAM_TIMEOUT": "soon"})
        self.assertEqual(error.option, "--upstream-timeout")

    def test_repeatable_from_environment(self) -> None:
        """A repeatable option's variable is split on its separator, blanks dropped."""
        self.assertEqual(o.LISTEN.read({}, {"LINKROUTER_LISTEN": "tcp:1, ,tcp:2"}),
                         ["tcp:1", "tcp:2"])
        self.assertEqual(o.CLAUDE_CODE_HOME.read({}, {"CLAUDE_CODE_HOME": "/a:/b"}),
                         ["/a", "/b"])

    def test_every_value_option_resolves_from_environment(self) -> None:
        """Variables of the table reach L{resolve}'s result, parsed by their row."""
        samples: dict[str, tuple[str, str, Any]] = {
            "UPSTREAM_BASE_URL": ("https://example.test/", "upstream", "https://example.test"),
            "LINKROUTER_SHUTDOWN_GRACE": ("2m", "shutdown_grace", 120.0),
            "LINKROUTER_STORE_TIMEOUT": ("3", "store_timeout", 3.0),
            "LINKROUTER_TLS_PORT": ("9443", "tls_port", 9443),
            "LINKROUTER_LOG_FORMAT": ("JSON", "log_format", "json"),
            "OAUTH_CLIENT_ID": ("client", "oauth_client_id", "client"),
            "LINKROUTER_HSTS": ("yes", "hsts", True),
            "LINKROUTER_METRICS_LISTEN": ("tcp:1,tcp:2", "metrics_listen", ("tcp:1", "tcp:2")),
        }
        for name, (value, attribute, expected) in samples.items():
            config = resolve({}, {"HOME": "/nonexistent", name: value})
            self.assertEqual(getattr(config, attribute), expected, name)


class DaemonPathTests(SynchronousTestCase):
    """
    L{makeService} decides "under twistd" from the options' parent (twistd's own
    options), not from whether a reactor was passed.
    """

    def options(self, args: list[str], parent: Any = None) -> Options:
        base = Path(self.mktemp()).resolve()
        base.mkdir()
        options = Options(environ={"HOME": str(base)})
        if parent is not None:
            options.parent = parent
        options.parseOptions(["--data-dir", str(base / "state"),
                              "--database", f"sqlite:///{base / 'store.sqlite3'}", *args])
        return options

    def test_under_twistd_with_a_reactor(self) -> None:
        """With twistd's options as parent, a passed reactor still gets the daemon's
        handling: signal handlers, and a bad endpoint stops with one line (exit 1)."""
        reactor = MemoryReactorClock()
        service = makeService(self.options(["--listen", "tcp:0:interface=127.0.0.1"], {}),
                              reactor=reactor)
        self.assertTrue(service.handle_signals)
        self.assertIsNotNone(service.on_config_error)
        bad = self.options(["--listen", "tcp:notaport"], {})
        exit = self.assertRaises(SystemExit, makeService, bad, reactor=reactor)
        self.assertEqual(exit.code, 1)

    def test_without_parent(self) -> None:
        """Without a parent (a test, a library caller) errors are raised and signals left
        alone, with or without a reactor."""
        reactor = MemoryReactorClock()
        service = makeService(self.options(["--listen", "tcp:0:interface=127.0.0.1"]),
                              reactor=reactor)
        self.assertFalse(service.handle_signals)
        self.assertIsNone(service.on_config_error)
        bad = self.options(["--listen", "tcp:notaport"])
        self.assertRaises(ConfigError, makeService, bad, reactor=reactor)

    def test_tac_is_a_daemon(self) -> None:
        """The .tac's C{Options(daemon=True)} counts as running under twistd."""
        self.assertTrue(Options(environ={}, daemon=True).daemon)
        self.assertFalse(Options(environ={}).daemon)
        self.assertIn("daemon=True", (REPO / "linkrouter.tac").read_text())


def _imports(path: Path) -> set[str]:
    """The linkrouter modules C{path} imports, at module level or inside functions."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.module:
            if node.module == "linkrouter":
                found.update(f"linkrouter.{alias.name}" for alias in node.names)
            elif node.module.startswith("linkrouter."):
                found.add(node.module)
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("linkrouter."))
    return found
