# -*- test-case-name: tests.unit.test_cli,tests.integration.test_cli -*-
"""
C{linkrouter doctor}: checks what the daemon would need (data directory, store, secrets,
upstream credentials, TLS files, and with C{--online} the upstream itself) and prints one
line per check. Read-only: it creates nothing.
"""

from __future__ import annotations

import os
import stat
import time
from collections.abc import Callable, Coroutine
from typing import Any, TextIO

from twisted.internet.defer import maybeDeferred
from twisted.internet.interfaces import IReactorTime

from linkrouter.config import Config
from linkrouter.database import Database, StoreError, redact_url
from linkrouter.parsing import ConfigError
from linkrouter.state import STRONG_SECRET_LENGTH, find_secret
from linkrouter.store import prepare


def _mode(path: os.PathLike[str] | str) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


class _Report:
    """C{doctor}'s output: one line per check (ok, warn or FAIL), counting failures."""

    def __init__(self, out: TextIO) -> None:
        self.out = out
        self.failures = 0

    def __call__(self, ok: bool | None, what: str, detail: str) -> None:
        mark = {True: "ok  ", False: "FAIL", None: "warn"}[ok]
        self.failures += ok is False
        self.out.write(f"{mark}  {what:<18} {detail}\n")


def _check_state(config: Config, report: _Report,
                 existing_store: Callable[[Config], Database]) -> None:
    """The data directory, the two secrets and the store, as the daemon would find them."""
    if config.data_dir.is_dir():
        report(True, "data dir", str(config.data_dir))
        if _mode(config.data_dir) & 0o077:
            report(None, "data dir mode", f"{oct(_mode(config.data_dir))}: others can read it")
    else:
        report(None, "data dir", f"{config.data_dir} does not exist (the daemon creates it "
                                 "on its first start)")
    for which in ("token_secret", "admin_key"):
        _check_secret(config, which, report)
    try:
        database = existing_store(config)
        _, revoked = prepare(database)
        report(True, "store", f"{redact_url(config.database)} ({len(revoked)} revoked)")
    except (ConfigError, StoreError) as e:
        report(False, "store", str(e))


def _check_secret(config: Config, which: str, report: _Report) -> None:
    what = which.replace("_", " ")
    try:
        value, source = find_secret(config, which)
    except ConfigError as e:
        report(False, what, str(e))
        return
    if os.path.exists(source):
        mode = _mode(source)
        if mode & 0o077:
            report(False, what, f"{source} ({oct(mode)}): others can read it; chmod 600 it")
            return
        source = f"{source} ({oct(mode)})"
    if len(value) < STRONG_SECRET_LENGTH:
        report(None, what, f"{source}: only {len(value)} characters; use "
                           f"{STRONG_SECRET_LENGTH} or more (or let the daemon generate it)")
        return
    report(True, what, source)


def doctor(config: Config, out: TextIO, online: bool = False, *,
           existing_store: Callable[[Config], Database], clock: IReactorTime,
           run: Callable[[Coroutine[Any, Any, Any]], Any]) -> int:
    """
    Check what the daemon would need; print one line per check; 1 if any failed.
    C{existing_store} opens the daemon's store without creating it; C{run} runs a
    coroutine whose awaits are already fired (the CLI's blocking calls).
    """
    from linkrouter.accounts import AccountPool, AccountUnavailable, build_accounts
    from linkrouter.credentials import claude_homes

    report = _Report(out)
    _check_state(config, report, existing_store)
    accounts = build_accounts(
        config.upstream_api_key, config.oauth_token,
        claude_homes(config.claude_code_homes, clock, maybeDeferred),
        clock, None, maybeDeferred, config.refresh_margin,
    )
    usable = 0
    for account in accounts:
        try:
            credential = run(account.credential())
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
        report(False, "credential", AccountPool(accounts, clock).missing_message([]))
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
    return 1 if report.failures else 0


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
