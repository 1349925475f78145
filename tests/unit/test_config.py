"""
Tests for L{linkrouter.config}: how flags, the environment (including the seed's variable
names) and defaults become one L{Config}, how bad values are reported, and how the data
directory and its generated secrets are made.
"""

from __future__ import annotations

import base64
import os
import stat
from pathlib import Path
from typing import Any

from twisted.internet.endpoints import serverFromString
from twisted.internet.protocol import Factory
from twisted.internet.testing import MemoryReactor
from twisted.trial.unittest import SynchronousTestCase

from linkrouter.config import Config, ConfigError, resolve
from linkrouter.state import MIN_SECRET_LENGTH, find_secret, load_secrets
from linkrouter.store import Database, redact_url

HOME = "/nonexistent/home/operator"
MiB = 1024 * 1024
#: What the seed's default ROUTER_HOST means: every IPv4 interface (only ever parsed here).
ALL_INTERFACES = "0.0.0.0"  # noqa: S104


def listening(description: str) -> tuple[int, str, int]:
    """
    What a Twisted endpoint description asks for: (port, interface, backlog), read by
    letting Twisted's own parser listen on a L{MemoryReactor}.
    """
    reactor = MemoryReactor()
    serverFromString(reactor, description).listen(Factory())
    [(port, _factory, backlog, interface)] = reactor.tcpServers
    return port, interface, backlog


def config(env: dict[str, str] | None = None, **flags: Any) -> Config:
    """Resolve C{flags} against C{env} (HOME pointing nowhere real unless given)."""
    environment = {"HOME": HOME}
    environment.update(env or {})
    return resolve(flags, environment)


class DefaultsTests(SynchronousTestCase):
    """With nothing configured, the defaults of DESIGN.md section 2 apply."""

    def setUp(self) -> None:
        self.config = config()

    def test_listen(self) -> None:
        """The one default listener is TCP port 8080 on all IPv4 interfaces."""
        self.assertEqual(len(self.config.listen), 1)
        port, interface, _ = listening(self.config.listen[0])
        self.assertEqual((port, interface), (8080, ALL_INTERFACES))

    def test_listen_backlog(self) -> None:
        """The default listener asks for a large backlog, not Twisted's 50."""
        _, _, backlog = listening(self.config.listen[0])
        self.assertGreaterEqual(backlog, 1024)

    def test_no_admin_listener(self) -> None:
        """By default the admin API has no listener of its own."""
        self.assertEqual(self.config.admin_listen, ())

    def test_data_dir_from_home(self) -> None:
        """Without STATE_DIRECTORY or XDG_STATE_HOME, state is ~/.local/state/linkrouter."""
        self.assertEqual(self.config.data_dir, Path(HOME, ".local", "state", "linkrouter"))

    def test_database(self) -> None:
        """The store is an SQLite file in the data directory."""
        path = Path(HOME, ".local", "state", "linkrouter", "linkrouter.sqlite3")
        self.assertEqual(self.config.database, f"sqlite://{path}")

    def test_secrets_unset(self) -> None:
        """No secret or secret file is configured: they will be generated."""
        self.assertIsNone(self.config.token_secret)
        self.assertIsNone(self.config.token_secret_file)
        self.assertIsNone(self.config.admin_key)
        self.assertIsNone(self.config.admin_key_file)

    def test_upstream_credentials_unset(self) -> None:
        """No OAuth token or API key is configured."""
        self.assertIsNone(self.config.oauth_token)
        self.assertIsNone(self.config.upstream_api_key)

    def test_urls(self) -> None:
        """The upstream is api.anthropic.com; tokens refresh at platform.claude.com."""
        self.assertEqual(self.config.upstream, "https://api.anthropic.com")
        self.assertEqual(
            self.config.oauth_token_url, "https://platform.claude.com/v1/oauth/token"
        )

    def test_all_dialects(self) -> None:
        """All three dialects are served."""
        self.assertEqual(self.config.api_formats, {"anthropic", "bedrock", "vertex"})

    def test_max_body_size(self) -> None:
        """Bodies up to 32 MiB (Anthropic's own limit) are accepted."""
        self.assertEqual(self.config.max_body_size, 32 * MiB)

    def test_not_verbose(self) -> None:
        """Verbose logging is off."""
        self.assertFalse(self.config.verbose)

    def test_claude_code_home(self) -> None:
        """The one Claude Code home is ~/.claude (of the HOME given)."""
        home = os.path.expanduser("~")
        self.assertEqual(config({"HOME": home}).claude_code_homes, (Path(home, ".claude"),))


class DataDirTests(SynchronousTestCase):
    """Where the state directory is when none is given."""

    def test_state_directory(self) -> None:
        """Under systemd, C{$STATE_DIRECTORY} is used as is."""
        cfg = config({"STATE_DIRECTORY": "/var/lib/linkrouter",
                      "XDG_STATE_HOME": "/xdg/state"})
        self.assertEqual(cfg.data_dir, Path("/var/lib/linkrouter"))

    def test_state_directory_list(self) -> None:
        """systemd may pass several directories separated by ':'; the first is used."""
        cfg = config({"STATE_DIRECTORY": "/var/lib/linkrouter:/var/lib/other"})
        self.assertEqual(cfg.data_dir, Path("/var/lib/linkrouter"))

    def test_xdg_state_home(self) -> None:
        """Otherwise C{$XDG_STATE_HOME/linkrouter}."""
        cfg = config({"XDG_STATE_HOME": "/xdg/state"})
        self.assertEqual(cfg.data_dir, Path("/xdg/state/linkrouter"))

    def test_env_beats_state_directory(self) -> None:
        """C{LINKROUTER_DATA_DIR} wins over C{$STATE_DIRECTORY}."""
        cfg = config({"LINKROUTER_DATA_DIR": "/srv/router", "STATE_DIRECTORY": "/var/lib/x"})
        self.assertEqual(cfg.data_dir, Path("/srv/router"))

    def test_flag_beats_env(self) -> None:
        """C{--data-dir} wins over C{LINKROUTER_DATA_DIR}."""
        cfg = config({"LINKROUTER_DATA_DIR": "/srv/router"}, data_dir="/opt/state")
        self.assertEqual(cfg.data_dir, Path("/opt/state"))

    def test_database_follows_data_dir(self) -> None:
        """The default database lives in whichever data directory applies."""
        cfg = config({"LINKROUTER_DATA_DIR": "/srv/router"})
        self.assertEqual(cfg.database, "sqlite:///srv/router/linkrouter.sqlite3")


class EnvironmentTests(SynchronousTestCase):
    """Every option of DESIGN.md section 2 can come from its environment variable."""

    def test_listen(self) -> None:
        """C{LINKROUTER_LISTEN} gives the listeners, comma-separated."""
        cfg = config({"LINKROUTER_LISTEN": "tcp:9000:interface=127.0.0.1, unix:/run/lr.sock"})
        self.assertEqual(cfg.listen, ("tcp:9000:interface=127.0.0.1", "unix:/run/lr.sock"))

    def test_admin_listen(self) -> None:
        """C{LINKROUTER_ADMIN_LISTEN} gives the admin listeners."""
        cfg = config({"LINKROUTER_ADMIN_LISTEN": "tcp:9001:interface=127.0.0.1"})
        self.assertEqual(cfg.admin_listen, ("tcp:9001:interface=127.0.0.1",))

    def test_router_host_and_port(self) -> None:
        """The seed's C{ROUTER_HOST}/C{ROUTER_PORT} shape the default listener."""
        cfg = config({"ROUTER_HOST": "127.0.0.1", "ROUTER_PORT": "3000"})
        port, interface, backlog = listening(cfg.listen[0])
        self.assertEqual((port, interface), (3000, "127.0.0.1"))
        self.assertGreaterEqual(backlog, 1024)

    def test_router_port_alone(self) -> None:
        """C{ROUTER_PORT} alone keeps the default interface."""
        port, interface, _ = listening(config({"ROUTER_PORT": "8123"}).listen[0])
        self.assertEqual((port, interface), (8123, ALL_INTERFACES))

    def test_router_host_ipv6(self) -> None:
        """An IPv6 C{ROUTER_HOST} is escaped so the endpoint parser reads it whole."""
        port, interface, _ = listening(config({"ROUTER_HOST": "::1"}).listen[0])
        self.assertEqual((port, interface), (8080, "::1"))

    def test_listen_beats_router_port(self) -> None:
        """C{LINKROUTER_LISTEN} replaces the listener C{ROUTER_PORT} would give."""
        cfg = config({"LINKROUTER_LISTEN": "tcp:9000", "ROUTER_PORT": "3000"})
        self.assertEqual(cfg.listen, ("tcp:9000",))

    def test_token_secret(self) -> None:
        """C{TOKEN_SECRET} and C{TOKEN_SECRET_FILE} are read."""
        cfg = config({"TOKEN_SECRET": "s" * 40, "TOKEN_SECRET_FILE": "/etc/lr/secret"})
        self.assertEqual(cfg.token_secret, "s" * 40)
        self.assertEqual(cfg.token_secret_file, Path("/etc/lr/secret"))

    def test_admin_key(self) -> None:
        """C{ADMIN_KEY} and C{ADMIN_KEY_FILE} are read."""
        cfg = config({"ADMIN_KEY": "k" * 40, "ADMIN_KEY_FILE": "/etc/lr/admin"})
        self.assertEqual(cfg.admin_key, "k" * 40)
        self.assertEqual(cfg.admin_key_file, Path("/etc/lr/admin"))

    def test_claude_code_home_list(self) -> None:
        """C{CLAUDE_CODE_HOME} is a ':'-separated list, one account each."""
        cfg = config({"CLAUDE_CODE_HOME": "/home/a/.claude:/home/b/.claude"})
        self.assertEqual(cfg.claude_code_homes,
                         (Path("/home/a/.claude"), Path("/home/b/.claude")))

    def test_oauth_token(self) -> None:
        """C{CLAUDE_CODE_OAUTH_TOKEN} is the upstream OAuth token."""
        cfg = config({"CLAUDE_CODE_OAUTH_TOKEN": "sk-ant-oat01-abc"})
        self.assertEqual(cfg.oauth_token, "sk-ant-oat01-abc")

    def test_upstream_api_key(self) -> None:
        """C{UPSTREAM_API_KEY} is the upstream API key."""
        cfg = config({"UPSTREAM_API_KEY": "sk-ant-api03-abc"})
        self.assertEqual(cfg.upstream_api_key, "sk-ant-api03-abc")

    def test_upstream(self) -> None:
        """C{UPSTREAM_BASE_URL} is the upstream (a trailing slash dropped)."""
        cfg = config({"UPSTREAM_BASE_URL": "http://127.0.0.1:9999/"})
        self.assertEqual(cfg.upstream, "http://127.0.0.1:9999")

    def test_oauth_token_url(self) -> None:
        """C{OAUTH_TOKEN_URL} is where logins are refreshed."""
        cfg = config({"OAUTH_TOKEN_URL": "http://127.0.0.1:9998/v1/oauth/token"})
        self.assertEqual(cfg.oauth_token_url, "http://127.0.0.1:9998/v1/oauth/token")

    def test_api_format(self) -> None:
        """C{UPSTREAM_API_FORMAT} limits the dialects served."""
        cfg = config({"UPSTREAM_API_FORMAT": "anthropic,vertex"})
        self.assertEqual(cfg.api_formats, {"anthropic", "vertex"})

    def test_api_format_seed_aliases(self) -> None:
        """The seed's names messages, invoke and rawpredict mean the three dialects."""
        for alias, dialect in (("messages", "anthropic"), ("invoke", "bedrock"),
                               ("rawpredict", "vertex")):
            cfg = config({"UPSTREAM_API_FORMAT": alias})
            self.assertEqual(cfg.api_formats, {dialect})
        cfg = config({"UPSTREAM_API_FORMAT": "Messages, INVOKE,rawPredict"})
        self.assertEqual(cfg.api_formats, {"anthropic", "bedrock", "vertex"})

    def test_database(self) -> None:
        """C{DATABASE_URL} is the store, SQLite or PostgreSQL."""
        url = "postgresql://router:pw@127.0.0.1:5432/linkrouter"
        self.assertEqual(config({"DATABASE_URL": url}).database, url)
        self.assertEqual(config({"DATABASE_URL": "sqlite:////srv/t.db"}).database,
                         "sqlite:////srv/t.db")

    def test_max_body_size(self) -> None:
        """C{LINKROUTER_MAX_BODY_SIZE} takes bytes or a unit."""
        for text, size in (("1000", 1000), ("512k", 512 * 1024), ("10MiB", 10 * MiB),
                           ("1g", 1024 * MiB)):
            self.assertEqual(config({"LINKROUTER_MAX_BODY_SIZE": text}).max_body_size, size)

    def test_verbose(self) -> None:
        """C{VERBOSE} turns on verbose logging with 1/true and off with 0/false."""
        for text, expected in (("1", True), ("true", True), ("TRUE", True), ("0", False),
                               ("false", False)):
            self.assertIs(config({"VERBOSE": text}).verbose, expected, text)


class FlagsBeatEnvironmentTests(SynchronousTestCase):
    """A flag wins over the environment variable of the same option."""

    def test_each_option(self) -> None:
        """For every single-valued option, the flag's value is the one used."""
        cases = [
            ("token_secret", "TOKEN_SECRET", "flag-secret", "env-secret", "token_secret"),
            ("admin_key", "ADMIN_KEY", "flag-key", "env-key", "admin_key"),
            ("oauth_token", "CLAUDE_CODE_OAUTH_TOKEN", "flag-oat", "env-oat", "oauth_token"),
            ("upstream_api_key", "UPSTREAM_API_KEY", "flag-api", "env-api",
             "upstream_api_key"),
            ("upstream", "UPSTREAM_BASE_URL", "http://127.0.0.1:1", "http://127.0.0.1:2",
             "upstream"),
            ("oauth_token_url", "OAUTH_TOKEN_URL", "http://127.0.0.1:3/t",
             "http://127.0.0.1:4/t", "oauth_token_url"),
            ("database", "DATABASE_URL", "sqlite:////flag.db", "sqlite:////env.db",
             "database"),
        ]
        for flag, env, flag_value, env_value, attribute in cases:
            cfg = config({env: env_value}, **{flag: flag_value})
            self.assertEqual(getattr(cfg, attribute), flag_value, flag)

    def test_secret_files(self) -> None:
        """C{--token-secret-file}/C{--admin-key-file} win over their variables."""
        cfg = config({"TOKEN_SECRET_FILE": "/env/t", "ADMIN_KEY_FILE": "/env/a"},
                     token_secret_file="/flag/t", admin_key_file="/flag/a")
        self.assertEqual((cfg.token_secret_file, cfg.admin_key_file),
                         (Path("/flag/t"), Path("/flag/a")))

    def test_api_format(self) -> None:
        """C{--api-format} wins over C{UPSTREAM_API_FORMAT}."""
        cfg = config({"UPSTREAM_API_FORMAT": "bedrock"}, api_format="vertex")
        self.assertEqual(cfg.api_formats, {"vertex"})

    def test_max_body_size(self) -> None:
        """C{--max-body-size} wins over C{LINKROUTER_MAX_BODY_SIZE}."""
        cfg = config({"LINKROUTER_MAX_BODY_SIZE": "2000"}, max_body_size="1000")
        self.assertEqual(cfg.max_body_size, 1000)

    def test_repeatable(self) -> None:
        """Repeated flags replace the whole list the environment gives."""
        cfg = config(
            {"LINKROUTER_LISTEN": "tcp:1", "LINKROUTER_ADMIN_LISTEN": "tcp:2",
             "CLAUDE_CODE_HOME": "/env/a:/env/b"},
            listen=["tcp:3", "tcp:4"], admin_listen=["tcp:5"],
            claude_code_homes=["/flag/c"],
        )
        self.assertEqual(cfg.listen, ("tcp:3", "tcp:4"))
        self.assertEqual(cfg.admin_listen, ("tcp:5",))
        self.assertEqual(cfg.claude_code_homes, (Path("/flag/c"),))

    def test_verbose_flag(self) -> None:
        """C{--verbose} turns verbose logging on even when C{VERBOSE=0}."""
        self.assertTrue(config({"VERBOSE": "0"}, verbose=1).verbose)

    def test_bad_env_ignored_when_flag_given(self) -> None:
        """An unusable variable does not matter when the flag overrides it."""
        cfg = config({"LINKROUTER_MAX_BODY_SIZE": "lots", "UPSTREAM_API_FORMAT": "grpc"},
                     max_body_size="5", api_format="anthropic")
        self.assertEqual((cfg.max_body_size, cfg.api_formats), (5, {"anthropic"}))


class BadValueTests(SynchronousTestCase):
    """Bad values raise L{ConfigError} whose one-line text names the option."""

    def assertBad(self, option: str, env: dict[str, str] | None = None, **flags: Any
                  ) -> ConfigError:
        error = self.assertRaises(ConfigError, config, env, **flags)
        self.assertEqual(error.option, option)
        self.assertTrue(str(error).startswith(option + ":"), str(error))
        self.assertNotIn("\n", str(error))
        return error

    def test_router_port_not_number(self) -> None:
        """C{ROUTER_PORT=http} is refused, naming ROUTER_PORT."""
        self.assertIn("'http'", str(self.assertBad("ROUTER_PORT", {"ROUTER_PORT": "http"})))

    def test_router_port_out_of_range(self) -> None:
        """C{ROUTER_PORT=70000} is refused, naming ROUTER_PORT."""
        self.assertBad("ROUTER_PORT", {"ROUTER_PORT": "70000"})

    def test_size(self) -> None:
        """A size that is not a number of bytes is refused, naming --max-body-size."""
        self.assertBad("--max-body-size", max_body_size="abc")
        self.assertBad("--max-body-size", {"LINKROUTER_MAX_BODY_SIZE": "12 parsecs"})
        self.assertBad("--max-body-size", max_body_size="-5")

    def test_size_zero(self) -> None:
        """A zero size is refused (no request could get through)."""
        self.assertBad("--max-body-size", max_body_size="0")

    def test_unknown_dialect(self) -> None:
        """An unknown dialect is refused, naming --api-format and the dialect."""
        error = self.assertBad("--api-format", api_format="anthropic,grpc")
        self.assertIn("grpc", str(error))
        self.assertBad("--api-format", {"UPSTREAM_API_FORMAT": "openai"})

    def test_no_dialect(self) -> None:
        """A list with no dialect in it is refused."""
        self.assertBad("--api-format", api_format=" , ")

    def test_bad_upstream(self) -> None:
        """An upstream that is not an http(s) URL is refused, naming --upstream."""
        for value in ("ftp://example.com", "api.anthropic.com", "http://", "not a url"):
            self.assertBad("--upstream", upstream=value)
        self.assertBad("--upstream", {"UPSTREAM_BASE_URL": "file:///etc/passwd"})

    def test_upstream_with_query(self) -> None:
        """An upstream with a query string is refused (paths are appended to it)."""
        self.assertBad("--upstream", upstream="https://api.anthropic.com/?x=1")

    def test_bad_oauth_token_url(self) -> None:
        """A token URL that is not http(s) is refused, naming --oauth-token-url."""
        self.assertBad("--oauth-token-url", {"OAUTH_TOKEN_URL": "gopher://x/"})

    def test_bad_database_scheme(self) -> None:
        """A database URL that is neither SQLite nor PostgreSQL is refused."""
        error = self.assertBad("--database", database="mysql://root@127.0.0.1/x")
        self.assertIn("mysql", str(error))
        self.assertBad("--database", {"DATABASE_URL": "/just/a/path.db"})

    def test_bad_sqlite_url(self) -> None:
        """C{sqlite://} without a path is refused."""
        self.assertBad("--database", database="sqlite://")
        self.assertBad("--database", database="sqlite:///")

    def test_bad_verbose(self) -> None:
        """C{VERBOSE=maybe} is refused, naming VERBOSE."""
        self.assertIn("'maybe'", str(self.assertBad("VERBOSE", {"VERBOSE": "maybe"})))


class LoadSecretsTests(SynchronousTestCase):
    """L{load_secrets} finds the router's own secrets, generating them on first start."""

    def setUp(self) -> None:
        self.base = Path(self.mktemp())
        self.base.mkdir()
        self.data_dir = self.base / "state" / "linkrouter"

    def config(self, **flags: Any) -> Config:
        return config({"HOME": str(self.base)}, data_dir=str(self.data_dir), **flags)

    def mode(self, path: Path) -> int:
        return stat.S_IMODE(path.stat().st_mode)

    def test_generated(self) -> None:
        """
        In a new data directory (made with mode 0700) the three secrets are generated into
        files with mode 0600 holding exactly the values returned.
        """
        loaded = load_secrets(self.config())
        self.assertEqual(self.mode(self.data_dir), 0o700)
        token_file = self.data_dir / "token-secret"
        key_file = self.data_dir / "admin-key"
        account_file = self.data_dir / "account-key"
        for path in (token_file, key_file, account_file):
            self.assertTrue(stat.S_ISREG(path.stat().st_mode))
            self.assertEqual(self.mode(path), 0o600)
        self.assertEqual(token_file.read_text().strip(), loaded.token_secret)
        self.assertEqual(key_file.read_text().strip(), loaded.admin_key)
        self.assertEqual(account_file.read_text().strip(), loaded.account_key)
        self.assertEqual(set(loaded.generated), {token_file, key_file, account_file})
        self.assertEqual(loaded.token_secret_source, str(token_file))
        self.assertEqual(loaded.admin_key_source, str(key_file))
        self.assertEqual(loaded.account_key_source, str(account_file))

    def test_generated_are_strong(self) -> None:
        """
        Generated secrets are long and different from each other; the account key is 32
        random bytes (URL-safe base64).
        """
        loaded = load_secrets(self.config())
        self.assertGreaterEqual(len(loaded.token_secret), 32)
        self.assertGreaterEqual(len(loaded.admin_key), 32)
        self.assertEqual(len(base64.urlsafe_b64decode(loaded.account_key + "=")), 32)
        self.assertEqual(len({loaded.token_secret, loaded.admin_key, loaded.account_key}), 3)

    def test_generated_differ_per_directory(self) -> None:
        """Two fresh data directories get different secrets."""
        first = load_secrets(self.config())
        self.data_dir = self.base / "other"
        second = load_secrets(self.config())
        self.assertNotEqual(first.token_secret, second.token_secret)
        self.assertNotEqual(first.admin_key, second.admin_key)

    def test_reused(self) -> None:
        """The second start reads the files the first one wrote: same values, none new."""
        first = load_secrets(self.config())
        second = load_secrets(self.config())
        self.assertEqual(second.token_secret, first.token_secret)
        self.assertEqual(second.admin_key, first.admin_key)
        self.assertEqual(second.generated, ())

    def test_existing_file_reused(self) -> None:
        """A token-secret file an operator put in the data directory is used."""
        self.data_dir.mkdir(parents=True)
        (self.data_dir / "token-secret").write_text("operator-chosen-secret\n")
        loaded = load_secrets(self.config())
        self.assertEqual(loaded.token_secret, "operator-chosen-secret")
        self.assertEqual(loaded.generated, (self.data_dir / "admin-key",
                                            self.data_dir / "account-key"))

    def test_token_secret_file(self) -> None:
        """C{--token-secret-file} is read (whitespace trimmed) and nothing is generated
        for the token secret."""
        secret_file = self.base / "secret.txt"
        secret_file.write_text("  from-a-file-secret \n")
        loaded = load_secrets(self.config(token_secret_file=str(secret_file)))
        self.assertEqual(loaded.token_secret, "from-a-file-secret")
        self.assertEqual(loaded.token_secret_source, str(secret_file))
        self.assertFalse((self.data_dir / "token-secret").exists())

    def test_admin_key_file(self) -> None:
        """C{--admin-key-file} is read."""
        key_file = self.base / "admin.txt"
        key_file.write_text("la_admin_from_file\n")
        loaded = load_secrets(self.config(admin_key_file=str(key_file)))
        self.assertEqual(loaded.admin_key, "la_admin_from_file")
        self.assertFalse((self.data_dir / "admin-key").exists())

    def test_values_given(self) -> None:
        """Secrets given as values are used; no file is written for them."""
        loaded = load_secrets(self.config(token_secret="given-secret-16ch",
                                          admin_key="given-admin-key-17"))
        self.assertEqual((loaded.token_secret, loaded.admin_key),
                         ("given-secret-16ch", "given-admin-key-17"))
        self.assertEqual(loaded.generated, (self.data_dir / "account-key",))
        self.assertFalse((self.data_dir / "token-secret").exists())
        self.assertFalse((self.data_dir / "admin-key").exists())

    def test_file_flag_beats_value_variable(self) -> None:
        """
        C{--token-secret-file} on the command line wins over C{TOKEN_SECRET} in the
        environment (and likewise for the admin key): flags win over variables.
        """
        secret_file = self.base / "secret.txt"
        secret_file.write_text("the-flag-file-secret\n")
        key_file = self.base / "admin.txt"
        key_file.write_text("the-flag-file-key\n")
        cfg = config(
            {"HOME": str(self.base), "TOKEN_SECRET": "env-secret", "ADMIN_KEY": "env-key"},
            data_dir=str(self.data_dir), token_secret_file=str(secret_file),
            admin_key_file=str(key_file),
        )
        loaded = load_secrets(cfg)
        self.assertEqual(loaded.token_secret, "the-flag-file-secret")
        self.assertEqual(loaded.admin_key, "the-flag-file-key")

    def test_account_key_given(self) -> None:
        """
        The account key comes from C{ACCOUNT_KEY}, else C{--account-key-file}
        (C{ACCOUNT_KEY_FILE}); then none is generated, and C{find_secret} finds the same.
        """
        cfg = config({"HOME": str(self.base), "ACCOUNT_KEY": "account-key-from-env"},
                     data_dir=str(self.data_dir))
        loaded = load_secrets(cfg)
        self.assertEqual((loaded.account_key, loaded.account_key_source),
                         ("account-key-from-env", "--account-key / environment"))
        self.assertEqual(find_secret(cfg, "account_key"), ("account-key-from-env",
                                                           "--account-key / environment"))
        key_file = self.base / "account.txt"
        key_file.write_text("  account-key-from-file \n")
        for cfg in (self.config(account_key_file=str(key_file)),
                    config({"HOME": str(self.base), "ACCOUNT_KEY_FILE": str(key_file)},
                           data_dir=str(self.data_dir))):
            loaded = load_secrets(cfg)
            self.assertEqual((loaded.account_key, loaded.account_key_source),
                             ("account-key-from-file", str(key_file)))
        self.assertFalse((self.data_dir / "account-key").exists())

    def test_account_key_short_or_missing(self) -> None:
        """
        A given account key shorter than the minimum stops start-up naming
        C{--account-key}; the CLI, finding none, says where it looked (and makes none).
        """
        error = self.assertRaises(ConfigError, load_secrets,
                                  self.config(account_key="x" * (MIN_SECRET_LENGTH - 1)))
        self.assertEqual(error.option, "--account-key")
        error = self.assertRaises(ConfigError, find_secret, self.config(), "account_key")
        self.assertEqual(error.option, "--account-key")
        self.assertIn(str(self.data_dir), str(error))
        self.assertIn("ACCOUNT_KEY_FILE", str(error))
        self.assertFalse((self.data_dir / "account-key").exists())

    def assertUnreadable(self, option: str, path: Path, **flags: Any) -> None:
        error = self.assertRaises(ConfigError, load_secrets, self.config(**flags))
        self.assertEqual(error.option, option)
        self.assertTrue(str(error).startswith(option + ":"), str(error))
        self.assertIn(str(path), str(error))
        self.assertNotIn("\n", str(error))

    def test_missing_secret_file(self) -> None:
        """A missing C{--token-secret-file} is an error naming that option and path."""
        missing = self.base / "no-such-file"
        self.assertUnreadable("--token-secret-file", missing, token_secret_file=str(missing))

    def test_unreadable_secret_file(self) -> None:
        """A C{--token-secret-file} that cannot be read (a directory) is an error."""
        self.assertUnreadable("--token-secret-file", self.base,
                              token_secret_file=str(self.base))

    def test_empty_secret_file(self) -> None:
        """An empty secret file is an error, not an empty HMAC key."""
        empty = self.base / "empty"
        empty.write_text("\n")
        self.assertUnreadable("--token-secret-file", empty, token_secret_file=str(empty))

    def test_missing_admin_key_file(self) -> None:
        """A missing C{--admin-key-file} is an error naming that option."""
        missing = self.base / "no-admin-key"
        self.assertUnreadable("--admin-key-file", missing, admin_key_file=str(missing))

    def test_data_dir_cannot_be_created(self) -> None:
        """A data directory that cannot be created is an error naming --data-dir."""
        blocker = self.base / "a-file"
        blocker.write_text("")
        self.data_dir = blocker / "state"
        error = self.assertRaises(ConfigError, load_secrets, self.config())
        self.assertEqual(error.option, "--data-dir")
        self.assertIn(str(self.data_dir), str(error))


def decoded_length(text: str) -> int:
    """How many random bytes a C{secrets.token_urlsafe} string carries."""
    return len(base64.urlsafe_b64decode(text + "=" * (-len(text) % 4)))


class SecretStrengthTests(SynchronousTestCase):
    """Generated secrets are strong; supplied ones shorter than 16 characters are refused."""

    def setUp(self) -> None:
        self.base = Path(self.mktemp()).resolve()
        self.base.mkdir()
        self.data_dir = self.base / "state"

    def config(self, env: dict[str, str] | None = None, **flags: Any) -> Config:
        return config({"HOME": str(self.base), **(env or {})}, data_dir=str(self.data_dir),
                      **flags)

    def test_generated_are_32_random_bytes(self) -> None:
        """The generated token secret and admin key each carry 32 random bytes."""
        loaded = load_secrets(self.config())
        self.assertEqual(decoded_length(loaded.token_secret), 32)
        self.assertTrue(loaded.admin_key.startswith("la_admin_"))
        self.assertEqual(decoded_length(loaded.admin_key[len("la_admin_"):]), 32)

    def assertTooShort(self, option: str, value: str, cfg: Config) -> None:
        error = self.assertRaises(ConfigError, load_secrets, cfg)
        self.assertTrue(str(error).startswith(option), str(error))
        self.assertIn(str(MIN_SECRET_LENGTH), str(error))
        self.assertNotIn(value, str(error).split(":", 1)[1])
        self.assertNotIn("\n", str(error))

    def test_short_values_refused(self) -> None:
        """
        A token secret or admin key under 16 characters, given as a flag, a variable or
        a file, stops start-up with one line naming the option and never the value.
        """
        short = "a" * (MIN_SECRET_LENGTH - 1)
        strong = "s" * 40
        self.assertTooShort("--token-secret", short,
                            self.config(token_secret=short, admin_key=strong))
        self.assertTooShort("--token-secret", short,
                            self.config({"TOKEN_SECRET": short, "ADMIN_KEY": strong}))
        self.assertTooShort("--admin-key", "b", self.config({"TOKEN_SECRET": strong,
                                                             "ADMIN_KEY": "b"}))
        short_file = self.base / "short"
        short_file.write_text(short + "\n")
        self.assertTooShort("--admin-key-file", short,
                            self.config(token_secret=strong, admin_key_file=str(short_file)))

    def test_short_file_in_data_dir_refused(self) -> None:
        """A short secret an operator wrote into the data directory is refused too."""
        self.data_dir.mkdir()
        (self.data_dir / "token-secret").write_text("tiny\n")
        self.assertTooShort("--token-secret-file", "tiny", self.config(admin_key="k" * 40))

    def test_sixteen_accepted(self) -> None:
        """Sixteen characters is enough to start."""
        value = "x" * MIN_SECRET_LENGTH
        loaded = load_secrets(self.config(token_secret=value, admin_key=value + "y"))
        self.assertEqual((loaded.token_secret, loaded.admin_key), (value, value + "y"))


class FindSecretTests(SynchronousTestCase):
    """
    L{find_secret} is how the CLI finds the daemon's secrets: it reads them and never
    creates anything; when one is missing it says where it looked and how to point it at
    the daemon's.
    """

    def setUp(self) -> None:
        self.base = Path(self.mktemp()).resolve()
        self.base.mkdir()
        self.data_dir = self.base / "elsewhere" / "state"

    def config(self, **flags: Any) -> Config:
        return config({"HOME": str(self.base)}, data_dir=str(self.data_dir), **flags)

    def files(self) -> list[Path]:
        return sorted(self.base.rglob("*"))

    def test_missing_says_where_and_how(self) -> None:
        """
        With no secret anywhere, each lookup fails with one line naming the data directory
        it looked in and the ways to point at the daemon's, and creates nothing.
        """
        for which, option, variable in (("token_secret", "--token-secret", "TOKEN_SECRET_FILE"),
                                        ("admin_key", "--admin-key", "ADMIN_KEY_FILE")):
            error = self.assertRaises(ConfigError, find_secret, self.config(), which)
            text = str(error)
            self.assertTrue(text.startswith(option + ":"), text)
            for phrase in (str(self.data_dir), "--data-dir", "LINKROUTER_DATA_DIR",
                           "/var/lib/linkrouter", variable):
                self.assertIn(phrase, text)
            self.assertNotIn("\n", text)
        self.assertEqual(self.files(), [])

    def test_found_in_data_dir(self) -> None:
        """The daemon's generated files are found, with their paths as the source."""
        generated = load_secrets(self.config())
        self.assertEqual(find_secret(self.config(), "token_secret"),
                         (generated.token_secret, str(self.data_dir / "token-secret")))
        self.assertEqual(find_secret(self.config(), "admin_key"),
                         (generated.admin_key, str(self.data_dir / "admin-key")))

    def test_given_value(self) -> None:
        """A value given as a flag is used as it is."""
        value = "v" * 40
        self.assertEqual(find_secret(self.config(token_secret=value), "token_secret")[0], value)
        self.assertEqual(self.files(), [])

    def test_short_refused(self) -> None:
        """The CLI refuses a short secret as the daemon does."""
        error = self.assertRaises(ConfigError, find_secret, self.config(token_secret="a"),
                                  "token_secret")
        self.assertIn(str(MIN_SECRET_LENGTH), str(error))


class DatabaseURLTests(SynchronousTestCase):
    """
    One SQLite URL form: C{sqlite:///PATH} names the absolute path C{/PATH} (as a
    C{file:///} URL does); C{sqlite:////PATH} (SQLAlchemy's absolute form) means the same.
    What the daemon prints is accepted back.
    """

    def file(self, url: str) -> Path:
        return Database(config(database=url).database).sqlite_path

    def test_three_slashes_absolute(self) -> None:
        """C{sqlite:///srv/t.db} is C{/srv/t.db}, not C{srv/t.db} below the working directory."""
        self.assertEqual(self.file("sqlite:///srv/t.db"), Path("/srv/t.db"))

    def test_four_slashes_absolute(self) -> None:
        """C{sqlite:////srv/t.db} is the same file."""
        self.assertEqual(self.file("sqlite:////srv/t.db"), Path("/srv/t.db"))

    def test_default_printed_form(self) -> None:
        """
        The default store URL is C{sqlite:///} followed by the data directory's absolute
        path, and it names the file in that directory.
        """
        cfg = config(data_dir="/srv/router")
        self.assertEqual(cfg.database, "sqlite:///srv/router/linkrouter.sqlite3")
        self.assertEqual(Database(cfg.database).sqlite_path,
                         Path("/srv/router/linkrouter.sqlite3"))

    def test_relative_data_dir(self) -> None:
        """A relative data directory still gives an absolute store path."""
        cfg = config(data_dir="some/relative/state")
        self.assertEqual(Database(cfg.database).sqlite_path,
                         Path.cwd() / "some/relative/state/linkrouter.sqlite3")

    def test_logged_form_round_trips(self) -> None:
        """
        The store URL as the daemon logs it and C{doctor} prints it
        (L{redact_url}) is accepted back as C{--database} and names the same file.
        """
        for cfg in (config(data_dir="/srv/router"), config(database="sqlite:////srv/t.db"),
                    config(database="sqlite:///srv/t.db")):
            printed = redact_url(cfg.database)
            self.assertEqual(self.file(printed), Database(cfg.database).sqlite_path, printed)

    def test_host_refused(self) -> None:
        """C{sqlite://host/path} (two slashes: a host) is refused with the right form."""
        error = self.assertRaises(ConfigError, config, database="sqlite://tmp/t.db")
        self.assertEqual(error.option, "--database")
        self.assertIn("sqlite:///", str(error))


class SystemdCredentialTests(SynchronousTestCase):
    """Secrets handed over by systemd's LoadCredential= are found without flags."""

    def test_credentials_directory(self) -> None:
        """
        $CREDENTIALS_DIRECTORY/token-secret, /admin-key and /account-key are used when
        nothing is set.
        """
        base = Path(self.mktemp())
        credentials = base / "credentials"
        credentials.mkdir(parents=True)
        (credentials / "token-secret").write_text("from-systemd-token-secret-0123456789\n")
        (credentials / "admin-key").write_text("from-systemd-admin-key\n")
        (credentials / "account-key").write_text("from-systemd-account-key\n")
        env = {"CREDENTIALS_DIRECTORY": str(credentials), "HOME": str(base)}
        config = resolve({"data_dir": str(base / "state")}, env)
        self.assertEqual(config.token_secret_file, credentials / "token-secret")
        self.assertEqual(config.account_key_file, credentials / "account-key")
        loaded = load_secrets(config)
        self.assertEqual((loaded.token_secret, loaded.admin_key, loaded.account_key),
                         ("from-systemd-token-secret-0123456789", "from-systemd-admin-key",
                          "from-systemd-account-key"))
        self.assertEqual(loaded.account_key_source, str(credentials / "account-key"))
        self.assertEqual(loaded.generated, ())

    def test_flags_win(self) -> None:
        """An explicit --token-secret still wins over the systemd credential."""
        credentials = Path(self.mktemp())
        credentials.mkdir()
        (credentials / "token-secret").write_text("from-systemd\n")
        config = resolve({"token_secret": "from-flag"},
                         {"CREDENTIALS_DIRECTORY": str(credentials), "HOME": "/nonexistent"})
        self.assertEqual((config.token_secret, config.token_secret_file), ("from-flag", None))
