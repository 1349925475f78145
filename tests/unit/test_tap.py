"""
Tests for L{linkrouter.tap} and the twistd plugin: option parsing (flags and an explicit
environment), the service C{makeService} builds and the listeners it binds (on a
L{MemoryReactorClock}), and plugin discovery. C{twistd} as a real process:
L{tests.integration.test_tap}.
"""

from __future__ import annotations

import fnmatch
import os
import stat
import sys
from pathlib import Path
from typing import Any

from twisted.application.service import IService, IServiceMaker, MultiService
from twisted.internet.testing import MemoryReactorClock
from twisted.plugin import getPlugins
from twisted.python import usage
from twisted.trial.unittest import SynchronousTestCase

from linkrouter.config import ConfigError
from linkrouter.tap import Options, makeService

#: The checkout this test file belongs to (it holds linkrouter/, twisted/plugins/ and
#: linkrouter.tac).
REPO = Path(__file__).resolve().parents[2]

#: Every option of DESIGN.md section 2.
DESIGN_OPTIONS = [
    "--listen", "--admin-listen", "--data-dir", "--token-secret", "--token-secret-file",
    "--admin-key", "--admin-key-file", "--claude-code-home", "--oauth-token",
    "--upstream-api-key", "--upstream", "--oauth-token-url", "--api-format", "--database",
    "--max-body-size", "--verbose",
]

#: What the seed's default ROUTER_HOST means: every IPv4 interface (only ever compared
#: with what a MemoryReactor was asked for; nothing binds it).
ALL_INTERFACES = "0.0.0.0"  # noqa: S104


def parsed(args: list[str], environ: dict[str, str] | None = None) -> Options:
    options = Options(environ={} if environ is None else environ)
    options.parseOptions(args)
    return options


class OptionsTests(SynchronousTestCase):
    """L{Options} reads flags and the environment it is given."""

    def test_repeatable_listen(self) -> None:
        """C{--listen} may be given several times; each endpoint is kept, in order."""
        options = parsed(["--listen", "tcp:8080", "--listen=unix:/run/lr.sock",
                          "--listen", "tcp:0:interface=127.0.0.1"])
        self.assertEqual(options.config.listen,
                         ("tcp:8080", "unix:/run/lr.sock", "tcp:0:interface=127.0.0.1"))

    def test_repeatable_admin_listen(self) -> None:
        """C{--admin-listen} may be given several times."""
        options = parsed(["--admin-listen", "tcp:9001:interface=127.0.0.1",
                          "--admin-listen", "unix:/run/admin.sock"])
        self.assertEqual(options.config.admin_listen,
                         ("tcp:9001:interface=127.0.0.1", "unix:/run/admin.sock"))
        self.assertEqual(len(options.config.listen), 1)

    def test_repeatable_claude_code_home(self) -> None:
        """C{--claude-code-home} may be given once per account."""
        options = parsed(["--claude-code-home", "/home/a/.claude",
                          "--claude-code-home", "/home/b/.claude"])
        self.assertEqual(options.config.claude_code_homes,
                         (Path("/home/a/.claude"), Path("/home/b/.claude")))

    def test_environ(self) -> None:
        """With no flags, the values come from the environment mapping given."""
        options = parsed([], {
            "LINKROUTER_LISTEN": "tcp:9000:interface=127.0.0.1",
            "LINKROUTER_DATA_DIR": "/srv/lr",
            "UPSTREAM_API_FORMAT": "invoke",
            "CLAUDE_CODE_HOME": "/a:/b",
            "VERBOSE": "true",
        })
        config = options.config
        self.assertEqual(config.listen, ("tcp:9000:interface=127.0.0.1",))
        self.assertEqual(config.data_dir, Path("/srv/lr"))
        self.assertEqual(config.api_formats, {"bedrock"})
        self.assertEqual(config.claude_code_homes, (Path("/a"), Path("/b")))
        self.assertTrue(config.verbose)

    def test_flags_beat_environ(self) -> None:
        """A flag wins over the variable for the same option."""
        options = parsed(["--listen", "tcp:1", "--max-body-size", "10", "--upstream",
                          "http://127.0.0.1:1"],
                         {"LINKROUTER_LISTEN": "tcp:2", "LINKROUTER_MAX_BODY_SIZE": "20",
                          "UPSTREAM_BASE_URL": "http://127.0.0.1:2"})
        self.assertEqual(options.config.listen, ("tcp:1",))
        self.assertEqual(options.config.max_body_size, 10)
        self.assertEqual(options.config.upstream, "http://127.0.0.1:1")

    def test_explicit_environ_only(self) -> None:
        """An explicit environment is the only one consulted, not C{os.environ}."""
        self.patch(os, "environ", {**os.environ, "LINKROUTER_DATA_DIR": "/from/os/environ"})
        self.assertEqual(parsed([], {"LINKROUTER_DATA_DIR": "/given"}).config.data_dir,
                         Path("/given"))

    def test_os_environ_by_default(self) -> None:
        """Without an explicit environment, C{os.environ} is read."""
        self.patch(os, "environ", {**os.environ, "LINKROUTER_DATA_DIR": "/from/os/environ"})
        options = Options()
        options.parseOptions([])
        self.assertEqual(options.config.data_dir, Path("/from/os/environ"))

    def test_verbose(self) -> None:
        """C{-v} and C{--verbose} turn verbose logging on."""
        self.assertTrue(parsed(["-v"]).config.verbose)
        self.assertTrue(parsed(["--verbose"]).config.verbose)
        self.assertFalse(parsed([]).config.verbose)

    def test_bad_value(self) -> None:
        """A bad value is a L{usage.UsageError} naming the option."""
        for args, option in ((["--max-body-size=abc"], "--max-body-size"),
                             (["--api-format=grpc"], "--api-format"),
                             (["--database=mysql://x"], "--database"),
                             (["--upstream=ftp://x"], "--upstream")):
            error = self.assertRaises(usage.UsageError, parsed, args)
            self.assertIn(option, str(error))

    def test_bad_environment_value(self) -> None:
        """A bad environment value is a L{usage.UsageError} naming the option."""
        error = self.assertRaises(usage.UsageError, parsed, [], {"ROUTER_PORT": "eighty"})
        self.assertIn("ROUTER_PORT", str(error))

    def test_unknown_flag(self) -> None:
        """An unknown flag is a L{usage.UsageError}."""
        self.assertRaises(usage.UsageError, parsed, ["--port=8080"])

    def test_usage_lists_options(self) -> None:
        """The usage text lists every option of DESIGN.md section 2."""
        text = str(Options(environ={}))
        for option in DESIGN_OPTIONS:
            self.assertIn(option, text)


class MakeServiceTests(SynchronousTestCase):
    """L{makeService} builds a service whose listeners bind when it starts."""

    def setUp(self) -> None:
        self.base = Path(self.mktemp()).resolve()
        self.base.mkdir()
        self.data_dir = self.base / "state"
        self.reactor = MemoryReactorClock()

    def service(self, args: tuple[str, ...] | list[str] = (), environ: dict[str, str] | None = None
                ) -> Any:
        env = {"HOME": str(self.base)}
        env.update(environ or {})
        options = parsed(
            ["--data-dir", str(self.data_dir),
             "--database", f"sqlite:///{self.base / 'store.sqlite3'}", *args],
            env,
        )
        service = makeService(options, reactor=self.reactor)

        def stop() -> None:
            # A MemoryReactorClock never runs the store's thread pool, so the Deferred
            # stopService returns may never fire; what matters is that the listeners
            # and timers are told to stop.
            if service.running:
                service.stopService()

        self.addCleanup(stop)
        return service

    def test_is_multiservice(self) -> None:
        """The result is a L{MultiService} (an L{IService}) for twistd to run."""
        service = self.service()
        self.assertIsInstance(service, MultiService)
        self.assertTrue(IService.providedBy(service))

    def test_binds_on_start(self) -> None:
        """Nothing is bound until the service starts."""
        service = self.service(["--listen", "tcp:0:interface=127.0.0.1"])
        self.assertEqual(self.reactor.tcpServers, [])
        service.startService()
        self.assertEqual(len(self.reactor.tcpServers), 1)

    def test_default_listener(self) -> None:
        """With no listen option: TCP 8080 on all interfaces with a backlog of 1024."""
        service = self.service()
        service.startService()
        [(port, _site, backlog, interface)] = self.reactor.tcpServers
        self.assertEqual((port, interface, backlog), (8080, ALL_INTERFACES, 1024))

    def test_router_host_port(self) -> None:
        """The seed's ROUTER_HOST/ROUTER_PORT move the default listener."""
        service = self.service([], {"ROUTER_HOST": "127.0.0.1", "ROUTER_PORT": "3000"})
        service.startService()
        [(port, _site, backlog, interface)] = self.reactor.tcpServers
        self.assertEqual((port, interface, backlog), (3000, "127.0.0.1", 1024))

    def test_listen(self) -> None:
        """
        Each C{--listen} endpoint is bound, all serving the same site; a TCP endpoint that
        sets no backlog gets 1024 instead of Twisted's 50, one that sets it keeps it.
        """
        service = self.service(["--listen", "tcp:8081:interface=127.0.0.1",
                                "--listen", r"tcp:8082:interface=\:\:1:backlog=7"])
        service.startService()
        bound = [(port, interface, backlog)
                 for port, _site, backlog, interface in self.reactor.tcpServers]
        self.assertEqual(sorted(bound), [(8081, "127.0.0.1", 1024), (8082, "::1", 7)])
        sites = {id(site) for _port, site, _backlog, _interface in self.reactor.tcpServers}
        self.assertEqual(len(sites), 1)

    def test_listen_from_environment(self) -> None:
        """C{LINKROUTER_LISTEN} gives the listeners when no flag does."""
        service = self.service([], {"LINKROUTER_LISTEN": "tcp:9100:interface=127.0.0.1"})
        service.startService()
        self.assertEqual([(p, i) for p, _s, _b, i in self.reactor.tcpServers],
                         [(9100, "127.0.0.1")])

    def test_admin_listen(self) -> None:
        """C{--admin-listen} binds a separate site next to the client listener."""
        service = self.service(["--listen", "tcp:8081:interface=127.0.0.1",
                                "--admin-listen", "tcp:9001:interface=127.0.0.1"])
        service.startService()
        by_port = {port: site for port, site, _b, _i in self.reactor.tcpServers}
        self.assertEqual(set(by_port), {8081, 9001})
        self.assertIsNot(by_port[8081], by_port[9001])

    def test_bad_endpoint(self) -> None:
        """An unparsable C{--listen} endpoint is a L{ConfigError} naming --listen."""
        options = parsed(["--data-dir", str(self.data_dir), "--listen", "tcp:notaport"],
                         {"HOME": str(self.base)})
        error = self.assertRaises(ConfigError, makeService, options, reactor=self.reactor)
        self.assertEqual(error.option, "--listen")
        self.assertIn("tcp:notaport", str(error))
        self.assertEqual(self.reactor.tcpServers, [])

    def test_unknown_endpoint_type(self) -> None:
        """An endpoint type Twisted does not know is a L{ConfigError} naming --listen."""
        options = parsed(["--data-dir", str(self.data_dir), "--listen", "nosuch:8080"],
                         {"HOME": str(self.base)})
        error = self.assertRaises(ConfigError, makeService, options, reactor=self.reactor)
        self.assertEqual(error.option, "--listen")

    def test_bad_admin_endpoint(self) -> None:
        """An unparsable C{--admin-listen} endpoint names --admin-listen."""
        options = parsed(["--data-dir", str(self.data_dir),
                          "--listen", "tcp:0:interface=127.0.0.1",
                          "--admin-listen", "tcp:port=admin"],
                         {"HOME": str(self.base)})
        error = self.assertRaises(ConfigError, makeService, options, reactor=self.reactor)
        self.assertEqual(error.option, "--admin-listen")

    def test_state_prepared(self) -> None:
        """Building the service creates the data directory, both secrets and the store."""
        self.service(["--listen", "tcp:0:interface=127.0.0.1"])
        for name in ("token-secret", "admin-key"):
            path = self.data_dir / name
            self.assertEqual(stat.S_IMODE(path.stat().st_mode), 0o600, name)
        self.assertTrue((self.base / "store.sqlite3").exists())


class CheckoutTests(SynchronousTestCase):
    """What running from a checkout leaves behind is ignored by git."""

    def test_twistd_files_ignored(self) -> None:
        """C{twistd.pid} and C{twistd.log}, which twistd writes in its working directory,
        match a pattern in C{.gitignore}."""
        patterns = [line.strip() for line in (REPO / ".gitignore").read_text().splitlines()
                    if line.strip() and not line.startswith("#")]
        for name in ("twistd.pid", "twistd.log"):
            self.assertTrue(any(fnmatch.fnmatch(name, p.lstrip("/")) for p in patterns), name)


class PluginTests(SynchronousTestCase):
    """twistd finds C{linkrouter} through the plugin file in the checkout."""

    def maker(self) -> Any:
        found = [p for p in getPlugins(IServiceMaker) if p.tapname == "linkrouter"]
        self.assertTrue(found, "no twistd plugin named linkrouter")
        return found[0]

    def test_discovered(self) -> None:
        """The C{linkrouter} service maker names L{linkrouter.tap}'s Options and
        makeService."""
        maker = self.maker()
        self.assertIs(maker.options, Options)
        self.assertIs(maker.makeService, makeService)
        self.assertTrue(maker.description)

    def test_checkout_is_portion(self) -> None:
        """
        The checkout's C{twisted/plugins} directory is searched for plugins (a portion
        of the C{twisted.plugins} namespace, found through C{sys.path}), and the plugin
        module loaded is this checkout's file (or an installed copy of it).
        """
        import twisted.plugins

        searched = [Path(p).resolve() for p in twisted.plugins.__path__]
        self.assertIn(REPO / "twisted" / "plugins", searched)
        self.maker()
        module = sys.modules["twisted.plugins.linkrouter_plugin"]
        ours = REPO / "twisted" / "plugins" / "linkrouter_plugin.py"
        self.assertEqual(Path(module.__file__).read_bytes(), ours.read_bytes())

    def test_namespace_portion(self) -> None:
        """The checkout has no C{twisted/__init__.py} or C{twisted/plugins/__init__.py},
        which would hide Twisted's own plugins (or ours)."""
        self.assertTrue((REPO / "twisted" / "plugins" / "linkrouter_plugin.py").is_file())
        self.assertFalse((REPO / "twisted" / "__init__.py").exists())
        self.assertFalse((REPO / "twisted" / "plugins" / "__init__.py").exists())
