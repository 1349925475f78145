"""
C{twistd -n linkrouter} and C{twistd -ny linkrouter.tac} run as real processes on
loopback. Option parsing and C{makeService} in memory: L{tests.unit.test_tap}.
"""

from __future__ import annotations

import http.client
import os
import signal
import socket
import stat
import subprocess
import sys
from pathlib import Path

from twisted.trial.unittest import SynchronousTestCase

from ..unit.test_tap import DESIGN_OPTIONS, REPO
from .test_systemd import wait_healthy

#: Exactly what the C{twistd} console script runs. (C{python -m twisted.scripts.twistd}
#: is no substitute: that module has no C{__main__} block and exits 0 doing nothing.)
TWISTD = (
    "import sys; from twisted.scripts.twistd import run; "
    "sys.argv[0] = 'twistd'; sys.exit(run())"
)

#: Upper bounds on how long a twistd process may take, in seconds.
START_TIMEOUT = 15.0
RUN_TIMEOUT = 30.0


def free_port() -> int:
    """A loopback TCP port nothing listens on (just now)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def get(port: int, path: str) -> tuple[int, bytes]:
    """A GET on loopback (http.client: no proxy from the environment is used)."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
    try:
        connection.request("GET", path)
        response = connection.getresponse()
        return response.status, response.read()
    finally:
        connection.close()


class TwistdTests(SynchronousTestCase):
    """
    C{twistd -n linkrouter} and C{twistd -ny linkrouter.tac} as real processes, with the
    checkout on C{PYTHONPATH} (the plugin file is a portion of the C{twisted.plugins}
    namespace package), a temporary C{HOME}, and no other configuration than given.
    """

    def setUp(self) -> None:
        self.base = Path(self.mktemp()).resolve()
        self.home = self.base / "home"
        self.cwd = self.base / "cwd"
        self.home.mkdir(parents=True)
        self.cwd.mkdir()
        self.data_dir = self.home / ".local" / "state" / "linkrouter"

    def environment(self, extra: dict[str, str] | None = None, pythonpath: bool = True
                    ) -> dict[str, str]:
        """
        A clean environment: none of the developer's linkrouter, XDG or systemd
        variables, and, unless overridden, a loopback listener on port 0 so that no
        test can bind a public port even if start-up unexpectedly succeeds.
        """
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "HOME": str(self.home),
            "LINKROUTER_LISTEN": "tcp:0:interface=127.0.0.1",
        }
        if pythonpath:
            env["PYTHONPATH"] = str(REPO)
        env.update(extra or {})
        return env

    def twistd(self, *args: str, env: dict[str, str] | None = None
               ) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-c", TWISTD, *args], cwd=self.cwd,
            env=env or self.environment(), capture_output=True, text=True,
            timeout=RUN_TIMEOUT, check=False,
        )

    def test_help(self) -> None:
        """C{--help} exits 0, lists every option of DESIGN.md section 2, and creates
        no state."""
        result = self.twistd("-n", "linkrouter", "--help")
        self.assertEqual(result.returncode, 0, result.stderr)
        for option in DESIGN_OPTIONS:
            self.assertIn(option, result.stdout)
        self.assertFalse((self.home / ".local").exists())

    def assertOneLine(self, option: str, *args: str, env: dict[str, str] | None = None
                      ) -> str:
        """
        twistd fails (non-zero) and prints exactly one line on stderr naming C{option},
        with no usage text and no traceback anywhere.
        """
        result = self.twistd("-n", "linkrouter", *args, env=env)
        self.assertNotEqual(result.returncode, 0)
        lines = result.stderr.splitlines()
        self.assertEqual(len(lines), 1, result.stderr)
        self.assertIn(option, lines[0])
        for text in (result.stdout, result.stderr):
            self.assertNotIn("Traceback", text)
            self.assertNotIn("Usage:", text)
        return lines[0]

    def test_bad_max_body_size(self) -> None:
        """C{--max-body-size=abc} stops start-up with one line naming the option."""
        self.assertIn("abc", self.assertOneLine("--max-body-size", "--max-body-size=abc"))

    def test_bad_api_format(self) -> None:
        """C{--api-format=grpc} stops start-up with one line naming the option."""
        self.assertIn("grpc", self.assertOneLine("--api-format", "--api-format=grpc"))

    def test_bad_listen(self) -> None:
        """C{--listen=tcp:notaport} stops start-up with one line naming --listen."""
        self.assertOneLine("--listen", "--listen=tcp:notaport")

    def test_bad_database_scheme(self) -> None:
        """C{--database=mysql://x} stops start-up with one line naming --database."""
        self.assertOneLine("--database", "--database=mysql://x")

    def test_database_cannot_be_opened(self) -> None:
        """A SQLite path below a regular file cannot be opened: one line, --database."""
        blocker = self.base / "a-file"
        blocker.write_text("")
        self.assertOneLine("--database", f"--database=sqlite:///{blocker / 'x.sqlite3'}")

    def test_database_parents_never_created(self) -> None:
        """
        An explicit C{--database} in a directory that does not exist (a typo) stops
        start-up with one line naming --database and that directory, in either absolute
        form, and creates no directory (nor anything in the working directory).
        """
        typo = self.base / "no-such-dir" / "linkrouter.sqlite3"
        for url in (f"sqlite://{typo}", f"sqlite:///{typo}"):
            line = self.assertOneLine("--database", f"--database={url}")
            self.assertIn(str(typo.parent), line)
        self.assertFalse(typo.parent.exists())
        self.assertEqual(list(self.cwd.iterdir()), [])

    def test_short_secret(self) -> None:
        """C{TOKEN_SECRET=a}: one line naming --token-secret and the 16-character minimum."""
        line = self.assertOneLine("--token-secret", env=self.environment({"TOKEN_SECRET": "a"}))
        self.assertIn("16", line)

    def test_short_admin_key(self) -> None:
        """C{ADMIN_KEY=b}: one line naming --admin-key."""
        line = self.assertOneLine("--admin-key", env=self.environment({"ADMIN_KEY": "b"}))
        self.assertIn("16", line)

    def test_version(self) -> None:
        """C{twistd -n linkrouter --version} prints linkrouter's version, not Twisted's."""
        import linkrouter

        result = self.twistd("-n", "linkrouter", "--version")
        self.assertEqual(result.returncode, 0, result.stderr)
        self.assertEqual(result.stdout, f"linkrouter {linkrouter.__version__}\n")
        self.assertFalse((self.home / ".local").exists())

    def test_missing_secret_file(self) -> None:
        """A missing C{--token-secret-file} stops start-up with one line naming it."""
        missing = self.base / "no-such-secret"
        line = self.assertOneLine("--token-secret-file", f"--token-secret-file={missing}")
        self.assertIn(str(missing), line)

    def test_bad_environment_value(self) -> None:
        """A bad seed variable (C{ROUTER_PORT=abc}) stops start-up naming it."""
        env = self.environment({"ROUTER_PORT": "abc"})
        del env["LINKROUTER_LISTEN"]
        self.assertOneLine("ROUTER_PORT", env=env)

    def test_port_in_use(self) -> None:
        """
        A listen port another process holds stops start-up with a non-zero exit and a
        message naming the address, not a traceback.
        """
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as holder:
            holder.bind(("127.0.0.1", 0))
            holder.listen(1)
            port = holder.getsockname()[1]
            env = self.environment({"LINKROUTER_LISTEN": f"tcp:{port}:interface=127.0.0.1"})
            result = self.twistd("-n", "linkrouter", env=env)
        output = result.stdout + result.stderr
        self.assertNotEqual(result.returncode, 0)
        self.assertIn(str(port), output)
        self.assertNotIn("Traceback", output)

    def start(self, args: list[str], env: dict[str, str]) -> tuple[subprocess.Popen[bytes],
                                                                   Path]:
        """Start twistd with its log (stdout and stderr) going to a file."""
        log = self.base / "twistd.log"
        with open(log, "wb") as out:
            process = subprocess.Popen(
                [sys.executable, "-c", TWISTD, *args], cwd=self.cwd, env=env,
                stdout=out, stderr=subprocess.STDOUT,
            )

        def reap() -> None:
            if process.poll() is None:
                process.kill()
            process.wait(timeout=RUN_TIMEOUT)

        self.addCleanup(reap)
        return process, log

    def assertServesWithGeneratedState(self, args: list[str], env: dict[str, str],
                                       port: int) -> None:
        """
        The process serves C{/health}; the data directory (0700) holds generated secrets
        (0600) whose paths, never values, are logged; SIGTERM stops it promptly.
        """
        process, log = self.start(args, env)
        wait_healthy(self, process, port, log, START_TIMEOUT)

        self.assertEqual(stat.S_IMODE(self.data_dir.stat().st_mode), 0o700)
        files = [self.data_dir / "token-secret", self.data_dir / "admin-key"]
        values = []
        for path in files:
            self.assertEqual(stat.S_IMODE(path.stat().st_mode), 0o600, path)
            values.append(path.read_text().strip())
            self.assertTrue(values[-1])

        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=START_TIMEOUT)
        except subprocess.TimeoutExpired:
            self.fail("twistd did not exit within the bound after SIGTERM")
        text = log.read_text()
        for path, value in zip(files, values):
            self.assertIn(str(path), text)
            self.assertNotIn(value, text)
        self.assertNotIn("Traceback", text)
        # twistd shut the service down in order (not a crash, not a kill -9), and the
        # service's own SIGTERM handler makes that a clean exit (status 0, not -15).
        self.assertIn("Server Shut Down", text)
        self.assertEqual(process.returncode, 0)
        self.assertRaises(OSError, get, port, "/health")

    def test_starts_with_no_options(self) -> None:
        """
        C{twistd -n linkrouter} with no options (only C{HOME} and C{LINKROUTER_LISTEN})
        starts, creates its state under C{~/.local/state/linkrouter}, serves
        C{/health}, and stops on SIGTERM.
        """
        port = free_port()
        env = self.environment({"LINKROUTER_LISTEN": f"tcp:{port}:interface=127.0.0.1"})
        self.assertServesWithGeneratedState(["-n", "linkrouter"], env, port)

    def test_tac(self) -> None:
        """
        C{twistd -ny linkrouter.tac} from the checkout (no C{PYTHONPATH}: the tac finds
        its own package) is configured by the environment the same way.
        """
        port = free_port()
        env = self.environment({"LINKROUTER_LISTEN": f"tcp:{port}:interface=127.0.0.1"},
                               pythonpath=False)
        self.assertServesWithGeneratedState(["-ny", str(REPO / "linkrouter.tac")], env, port)
