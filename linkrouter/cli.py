# -*- test-case-name: tests.test_cli -*-
"""
The C{linkrouter} console script, for operators:

    linkrouter [options] tokens issue [--label L] [--ttl-hours N]
    linkrouter [options] tokens list | show ID | revoke ID
    linkrouter [options] doctor

It takes the daemon's options and environment, so it works on the same store and secret.
A running daemon picks up a revocation made here within two seconds.
"""

from __future__ import annotations

import json
import os
import stat
import sys
import time
from collections.abc import Coroutine, Mapping, Sequence
from typing import Any, TextIO

from twisted.internet.defer import Deferred, maybeDeferred
from twisted.python import usage
from twisted.python.failure import Failure

from linkrouter.accounts import AccountPool, AccountUnavailable, build_accounts
from linkrouter.admin import IssueRequest, TokenAdmin
from linkrouter.config import Config, ConfigError, load_secrets
from linkrouter.credentials import claude_homes
from linkrouter.errors import APIError
from linkrouter.labels import escaped
from linkrouter.store import (
    BlockingRunner,
    Database,
    RevocationCache,
    StoreError,
    TokenStore,
    prepare,
    redact_url,
)
from linkrouter.tap import Options as DaemonOptions
from linkrouter.tokens import TokenAuthority


class WallClock:
    """The only part of IReactorTime the CLI needs."""

    def seconds(self) -> float:
        return time.time()


class _JSONFlag(usage.Options):
    optFlags = [["json", None, "Print JSON instead of a table."]]


class IssueOptions(usage.Options):
    synopsis = "[--label LABEL] [--ttl-hours HOURS]"
    optParameters = [
        ["label", "l", "", "Who or what the token is for."],
        ["ttl-hours", "t", 24, "Hours until the token expires.", int],
    ]


class ListOptions(_JSONFlag):
    pass


class _IdOptions(usage.Options):
    synopsis = "TOKEN_ID"

    def parseArgs(self, token_id: str) -> None:  # noqa: N802 - twisted API
        self["id"] = token_id


class ShowOptions(_IdOptions):
    pass


class RevokeOptions(_IdOptions):
    pass


class TokensOptions(usage.Options):
    synopsis = "issue|list|show|revoke"
    subCommands = [
        ["issue", None, IssueOptions, "Issue a new router token (printed once)."],
        ["list", None, ListOptions, "List tokens (ids and metadata, never tokens)."],
        ["show", None, ShowOptions, "Show one token's record."],
        ["revoke", None, RevokeOptions, "Revoke a token by id."],
    ]

    def postOptions(self) -> None:  # noqa: N802
        if self.subCommand is None:
            raise usage.UsageError("choose one of: issue, list, show, revoke")


class DoctorOptions(usage.Options):
    synopsis = "[--online]"
    optFlags = [["online", None, "Also check that the upstream answers (one HTTPS request)."]]


class Options(DaemonOptions):
    """The daemon's options, plus the operator's commands."""

    synopsis = "[options] tokens|doctor"
    longdesc = (
        "Operate a linkrouter: issue, list, show and revoke router tokens, or check the "
        "configuration. Takes the same options and environment as `twistd linkrouter`."
    )
    subCommands = [
        ["tokens", None, TokensOptions, "Issue, list, show and revoke router tokens."],
        ["doctor", None, DoctorOptions, "Check configuration, store and credentials."],
    ]

    def postOptions(self) -> None:  # noqa: N802
        if self.subCommand is None:
            raise usage.UsageError("choose a command: tokens or doctor")
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


def _admin(config: Config) -> tuple[TokenAdmin, Any]:
    secrets = load_secrets(config)
    database = Database(config.database)
    try:
        prepare(database)
        connection = database.connect()
    except StoreError as e:
        raise ConfigError("--database", str(e)) from None
    store = TokenStore(database.queries(), BlockingRunner(connection))
    clock = WallClock()
    authority = TokenAuthority(secrets.token_secret.encode("utf-8"), clock)
    return TokenAdmin(authority, store, RevocationCache(store), clock), connection


def _table(records: list[dict[str, Any]], out: TextIO) -> None:
    columns = ["id", "label", "created_at", "expires_at", "revoked_at", "last_used_at",
               "request_count"]
    # Every cell escaped: a label stored by an older version (or any other writer) must not
    # reach the terminal raw.
    rows = [[escaped(str(r.get(c)), None) if r.get(c) is not None else "-" for c in columns]
            for r in records]
    widths = [max([len(c)] + [len(row[i]) for row in rows]) for i, c in enumerate(columns)]
    for row in [columns] + rows:
        out.write("  ".join(v.ljust(w) for v, w in zip(row, widths)).rstrip() + "\n")


def tokens(config: Config, options: usage.Options, out: TextIO) -> int:
    admin, connection = _admin(config)
    try:
        command, sub = options.subCommand, options.subOptions
        if command == "issue":
            ask = IssueRequest.from_json({"label": sub["label"], "ttl_hours": sub["ttl-hours"]})
            result = run_now(admin.issue(ask))
            out.write(json.dumps(result, indent=2) + "\n")
        elif command == "list":
            records = run_now(admin.list())["tokens"]
            if sub["json"]:
                out.write(json.dumps({"tokens": records}, indent=2) + "\n")
            else:
                _table(records, out)
        elif command == "show":
            out.write(json.dumps(run_now(admin.show(sub["id"])), indent=2) + "\n")
        elif command == "revoke":
            out.write(json.dumps(run_now(admin.revoke(sub["id"])), indent=2) + "\n")
        return 0
    finally:
        connection.close()


def _mode(path: os.PathLike[str] | str) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def doctor(config: Config, out: TextIO, online: bool = False) -> int:
    """Check what the daemon would need; print one line per check; 1 if any failed."""
    problems = 0

    def report(ok: bool | None, what: str, detail: str) -> None:
        nonlocal problems
        mark = {True: "ok  ", False: "FAIL", None: "warn"}[ok]
        problems += ok is False
        out.write(f"{mark}  {what:<18} {detail}\n")

    try:
        secrets = load_secrets(config)
        report(True, "data dir", str(config.data_dir))
        if _mode(config.data_dir) & 0o077:
            report(None, "data dir mode", f"{oct(_mode(config.data_dir))}: others can read it")
        for name, source in (("token secret", secrets.token_secret_source),
                             ("admin key", secrets.admin_key_source)):
            if os.path.exists(source):
                loose = _mode(source) & 0o077
                report(not loose, name, f"{source} ({oct(_mode(source))})")
            else:
                report(True, name, source)
    except ConfigError as e:
        report(False, "secrets", str(e))
    try:
        version, revoked = prepare(Database(config.database))
        report(True, "store", f"{redact_url(config.database)} ({len(revoked)} revoked)")
    except StoreError as e:
        report(False, "store", str(e))
    accounts = build_accounts(
        config.upstream_api_key, config.oauth_token,
        claude_homes(config.claude_code_homes, WallClock(), maybeDeferred),
        WallClock(), None, maybeDeferred, config.refresh_margin,
    )
    usable = 0
    for account in accounts:
        try:
            credential = run_now(account.credential())
        except AccountUnavailable as e:
            report(None, "account", f"{account.id}: {account.needs_login or e}")
            continue
        usable += 1
        expired = credential.expires_at is not None and credential.expires_at < time.time()
        refreshable = " (refreshable)" if credential.refresh_token else ""
        report(None if expired else True, "account",
               f"{account.id}: {credential.describe()}{refreshable}"
               + (" (EXPIRED: the router will refresh it)" if expired and refreshable else "")
               + (" (EXPIRED: log in again)" if expired and not refreshable else ""))
    if not usable:
        report(False, "credential", AccountPool(accounts, WallClock()).missing_message([]))
    else:
        report(True, "credential", f"{usable} of {len(accounts)} account(s) usable")
    for kind, path in (("TLS certificate", config.tls_cert), ("TLS key", config.tls_key),
                       ("TLS chain", config.tls_chain)):
        if path is not None and not os.access(path, os.R_OK):
            report(False, kind, f"{path} is not readable")
    if config.tls_cert is not None and config.tls_key is not None:
        from linkrouter.tls import ReloadableTLS, TLSConfigError

        try:
            tls = ReloadableTLS(config.tls_cert, config.tls_key, config.tls_chain)
        except TLSConfigError as e:
            report(False, "TLS", str(e))
        else:
            days = (tls.not_after.timestamp() - time.time()) / 86400
            report(None if days < 14 else True, "TLS",
                   f"{tls.subject}, expires {tls.not_after:%Y-%m-%d} ({days:.0f} days)")
    if online:
        report(*_reachable(config.upstream))
    else:
        report(True, "upstream", f"{config.upstream} (not contacted; --online checks it)")
    return 1 if problems else 0


def _reachable(url: str) -> tuple[bool, str, str]:
    """One request to the upstream: any HTTP answer means it is reachable."""
    import urllib.error
    import urllib.request

    started = time.monotonic()
    try:
        with urllib.request.urlopen(url + "/v1/models", timeout=10) as answer:  # noqa: S310
            status = answer.status
    except urllib.error.HTTPError as e:
        status = e.code
    except (urllib.error.URLError, OSError) as e:
        reason = getattr(e, "reason", e)
        return False, "upstream", f"{url} unreachable: {reason}"
    elapsed = (time.monotonic() - started) * 1000
    return True, "upstream", f"{url} answered HTTP {status} in {elapsed:.0f} ms"


def main(argv: Sequence[str] | None = None, environ: Mapping[str, str] | None = None,
         out: TextIO | None = None) -> int:
    out = out or sys.stdout
    options = Options(environ)
    try:
        options.parseOptions(list(sys.argv[1:] if argv is None else argv))
    except usage.UsageError as e:
        sys.stderr.write(f"linkrouter: error: {e} (see linkrouter --help)\n")
        return 2
    try:
        if options.subCommand == "tokens":
            return tokens(options.config, options.subOptions, out)
        return doctor(options.config, out, bool(options.subOptions["online"]))
    except (ConfigError, APIError) as e:
        message = e.message if isinstance(e, APIError) else str(e)
        sys.stderr.write(f"linkrouter: error: {message}\n")
        return 1


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
