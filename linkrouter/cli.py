# -*- test-case-name: tests.unit.test_cli,tests.integration.test_cli -*-
"""
The C{linkrouter} console script, for operators:

    linkrouter [options] tokens issue [--label L] [--ttl-hours N] [limits]
    linkrouter [options] tokens list | show ID | revoke ID
    linkrouter [options] tokens limit ID (--clear | limits)
    linkrouter [options] usage [--since 7d|ISO] [--until ISO] [--by token,model,day] [--json]
    linkrouter [options] audit [--since 7d|ISO] [--until ISO] [--action A] [--json]
    linkrouter [options] accounts list [--json] [--url URL] | disable|enable|reset ID
    linkrouter [options] accounts login NAME [--setup-token]
    linkrouter [options] doctor [--online]
    linkrouter --version

It takes the daemon's options and environment (before or after the command), so it works
on the same store and secret. It never creates either: only the daemon does, and a secret
made up here would sign tokens the daemon refuses. A running daemon picks up a revocation
made here within two seconds.

The C{tokens} commands live in L{linkrouter.clitokens}, C{usage} in L{linkrouter.cliusage},
C{accounts} in L{linkrouter.cliaccounts}, C{audit} in L{linkrouter.cliaudit}, C{doctor}
in L{linkrouter.clidoctor}; here are the parser and the store they share.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Coroutine, Mapping, Sequence
from typing import TYPE_CHECKING, Any, TextIO, cast

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.python import usage
from twisted.python.failure import Failure

from linkrouter.cliaccounts import AccountsOptions, RouterClient, accounts, router_url
from linkrouter.cliaudit import AuditOptions, audit_report
from linkrouter.clidoctor import doctor
from linkrouter.clitokens import TokensOptions, tokens
from linkrouter.cliusage import UsageOptions, usage_report
from linkrouter.config import Config
from linkrouter.database import Database, StoreError
from linkrouter.errors import APIError
from linkrouter.parsing import ConfigError
from linkrouter.revocations import RevocationCache
from linkrouter.state import find_secret, store_missing_message
from linkrouter.store import BlockingRunner, TokenStore, prepare
from linkrouter.tap import Options as DaemonOptions

if TYPE_CHECKING:
    from linkrouter.admin import TokenAdmin


class WallClock:
    """The only part of IReactorTime the CLI needs."""

    def seconds(self) -> float:
        return time.time()


def _clock() -> IReactorTime:
    return cast(IReactorTime, WallClock())


class DoctorOptions(usage.Options):
    synopsis = "[--online]"
    optFlags = [["online", None, "Also check that the upstream answers (one HTTPS request)."]]


class Options(DaemonOptions):
    """The daemon's options, plus the operator's commands."""

    synopsis = "[options] tokens|usage|accounts|audit|doctor [options]"
    longdesc = (
        "Operate a linkrouter: issue, list, show, limit and revoke router tokens, report "
        "usage and cost, see and control the upstream accounts, read the audit trail, or "
        "check the configuration. Takes the same options and environment as `twistd "
        "linkrouter`; they may come before or after the command. "
        "It reads the daemon's secrets and store and never creates them: point it at the "
        "daemon's data directory."
    )
    subCommands = [
        ["tokens", None, TokensOptions, "Issue, list, show, limit and revoke router tokens."],
        ["usage", None, UsageOptions, "Usage and cost by token, model, account, day."],
        ["accounts", None, AccountsOptions,
         "List the upstream accounts; disable, enable or reset one."],
        ["audit", None, AuditOptions, "The audit trail: admin changes, who, from where."],
        ["doctor", None, DoctorOptions, "Check configuration, store and credentials."],
    ]

    def postOptions(self) -> None:
        if self.subCommand is None:
            raise usage.UsageError("choose a command: tokens, usage, accounts, audit or doctor")
        super().postOptions()


def run_now(coroutine: Coroutine[Any, Any, Any]) -> Any:
    """Run a coroutine whose every await is already fired (the CLI's blocking store)."""
    results: list[Any] = []
    Deferred.fromCoroutine(coroutine).addBoth(results.append)
    if not results:
        raise RuntimeError("store operation did not complete synchronously")
    if isinstance(results[0], Failure):
        results[0].raiseException()
    return results[0]


def _globals_first(argv: list[str]) -> list[str]:
    """
    Move the daemon's options given after a command (C{doctor --online --upstream X}) in
    front of it, where the parser looks for them, and a command's arguments after its
    options (C{tokens limit ID --rpm 5}: getopt stops at the first argument). A command's
    own options, and their values, stay where they are; C{--version} is linkrouter's
    wherever it is.
    """
    parser: usage.Options = Options({})
    top = own = _option_names(parser)
    front: list[str] = []
    rest: list[str] = []
    arguments: list[str] = []
    args = iter(argv)
    for arg in args:
        if arg == "--":
            rest += [arg, *arguments, *args]
            arguments = []
            break
        if not arg.startswith("-") or arg == "-":
            commands = {c[0]: c[2] for c in getattr(parser, "subCommands", None) or []}
            if arg in commands:
                parser = commands[arg]()
                own = _option_names(parser)
                own.pop("version", None)
                rest.append(arg)
            else:
                arguments.append(arg)
            continue
        name = arg[2:].partition("=")[0] if arg.startswith("--") else arg[1]
        names, target = (own, rest) if name in own else (top, front if name in top else rest)
        target.append(arg)
        attached = "=" in arg if arg.startswith("--") else len(arg) > 2
        if names.get(name) and not attached:
            value = next(args, None)
            if value is not None:
                target.append(value)
    return front + rest + arguments


def _option_names(options: usage.Options) -> dict[str, bool]:
    """Every option name (long, and short as one letter) and whether it takes a value."""
    names = {name.rstrip("="): name.endswith("=") for name in options.longOpt}
    letters = options.shortOpt
    for i, letter in enumerate(letters):
        if letter != ":":
            names[letter] = letters[i + 1:i + 2] == ":"
    return names


def _token_admin(config: Config) -> tuple[TokenAdmin, Any]:
    from linkrouter.admin import TokenAdmin
    from linkrouter.tokens import TokenAuthority

    secret, _ = find_secret(config, "token_secret")
    database = _existing_store(config)
    try:
        prepare(database)
        connection = database.connect()
    except StoreError as e:
        raise ConfigError("--database", str(e)) from None
    store = TokenStore(database.queries(), BlockingRunner(connection))
    clock = _clock()
    authority = TokenAuthority(secret.encode("utf-8"), clock)
    return TokenAdmin(authority, store, RevocationCache(store), clock), connection


def _existing_store(config: Config) -> Database:
    """The daemon's store; an SQLite file that does not exist is not created here."""
    database = Database(config.database)
    if database.kind == "sqlite" and not database.sqlite_path.exists():
        raise ConfigError("--database", store_missing_message(database.sqlite_path))
    return database


def with_admin(config: Config, command: Callable[[TokenAdmin], Coroutine[Any, Any, int]]
               ) -> int:
    """Run C{command} with a L{TokenAdmin} on the daemon's store, then close the store."""
    admin, connection = _token_admin(config)
    try:
        result: int = run_now(command(admin))
        return result
    finally:
        connection.close()


def _connect(config: Config) -> tuple[Database, Any]:
    """The daemon's store (migrated) and a blocking connection to it."""
    database = _existing_store(config)
    try:
        prepare(database)
        return database, database.connect()
    except StoreError as e:
        raise ConfigError("--database", str(e)) from None


def with_store(config: Config, command: Callable[[TokenStore], Any]) -> Any:
    """C{command(store)} (awaited) on the daemon's store, then close the store."""
    database, connection = _connect(config)

    async def run() -> Any:
        return await command(TokenStore(database.queries(), BlockingRunner(connection)))

    try:
        return run_now(run())
    finally:
        connection.close()


def _accounts(config: Config, options: usage.Options, out: TextIO) -> int:
    """C{accounts}, with the router's address and admin key and the daemon's store."""

    def router(url: str | None) -> RouterClient:
        option = "--admin-listen" if config.admin_listen else "--listen"
        where = router_url(url, (config.admin_listen or config.listen)[0], option)
        key, _ = find_secret(config, "admin_key")
        return RouterClient(where, key)

    def write(account_id: str, disabled: bool | None, reset_at: int | None, at: int) -> None:
        with_store(config, lambda store: store.set_control(account_id, disabled, reset_at, at))

    if options.subCommand == "login":
        return _login(config, options.subOptions, out)
    return accounts(options, out, router, write)


def _login(config: Config, options: usage.Options, out: TextIO) -> int:
    """
    C{accounts login}: one login at a time, its code traded with urllib, the account
    sealed with the daemon's account key into the daemon's store.
    """
    from linkrouter.accountstore import ManagedStore
    from linkrouter.clilogin import login
    from linkrouter.codeexchange import CodeExchange, blocking_post
    from linkrouter.login import Logins, PendingLogins
    from linkrouter.sealing import AccountKey

    secret, source = find_secret(config, "account_key")
    database, connection = _connect(config)
    clock = _clock()
    store = ManagedStore.open(database, BlockingRunner(connection),
                              AccountKey.from_secret(secret, source), clock)
    logins = Logins(
        PendingLogins(clock, config.oauth_authorize_url, config.oauth_client_id, limit=1),
        CodeExchange(blocking_post(), config.oauth_token_url, clock, config.oauth_client_id),
        store, clock)
    try:
        return login(options, logins, run_now, out, sys.stdin, sys.stderr)
    finally:
        connection.close()


def main(argv: Sequence[str] | None = None, environ: Mapping[str, str] | None = None,
         out: TextIO | None = None) -> int:
    out = out or sys.stdout
    options = Options(environ)
    try:
        options.parseOptions(_globals_first(list(sys.argv[1:] if argv is None else argv)))
    except usage.UsageError as e:
        sys.stderr.write(f"linkrouter: error: {e} (see linkrouter --help)\n")
        return 2
    try:
        if options.subCommand == "accounts":
            return _accounts(options.config, options.subOptions, out)
        command = {"tokens": tokens, "usage": usage_report,
                   "audit": audit_report}.get(options.subCommand or "")
        if command is not None:
            sub = options.subOptions
            return with_admin(options.config, lambda admin: command(admin, sub, out))
        return doctor(options.config, out, bool(options.subOptions["online"]),
                      existing_store=_existing_store, clock=_clock(), run=run_now)
    except (ConfigError, APIError) as e:
        message = e.message if isinstance(e, APIError) else str(e)
        sys.stderr.write(f"linkrouter: error: {message}\n")
        return 1


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
