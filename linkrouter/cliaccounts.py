# -*- test-case-name: tests.unit.test_cli_accounts,tests.integration.test_cli_accounts -*-
"""
C{linkrouter accounts list [--json]} and C{linkrouter accounts disable|enable|reset ID}
(C{accounts login}: L{linkrouter.clilogin}).

An account's health lives in the running router, so C{list} asks it: C{GET /api/accounts}
on its admin API (C{--url}; by default the first C{--admin-listen} address, else the
first C{--listen} one, on loopback when it listens on every interface), with the admin
key from C{--admin-key} or the data directory, and a short timeout.

The controls are written to the store directly, so they work while every router is down
and reach every router of a fleet within two seconds (L{linkrouter.controls}). When a
router answers, it is asked first whether it has the account: an id it does not know is
refused (404) and nothing is written. When none answers, any well-formed id is written:
it applies to the account with that id once one exists.

The console script (L{linkrouter.cli}) hands in the router's client and the store.
"""

from __future__ import annotations

import json
import re
import ssl
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from datetime import datetime, timezone
from typing import Any, TextIO

from attrs import frozen
from twisted.python import usage

from linkrouter.clilogin import LoginOptions
from linkrouter.errors import APIError
from linkrouter.labels import escaped
from linkrouter.parsing import ConfigError

#: Seconds to wait for the router's answer.
TIMEOUT = 5.0
#: What an account id looks like (every kind of account's ids fit).
ACCOUNT_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:@+-]{0,199}")


class _RouterOptions(usage.Options):
    optParameters = [["url", None, None,
                      "The router's admin API, e.g. http://127.0.0.1:8080 (default: the "
                      "first --admin-listen, else --listen, address)."]]

    def postOptions(self) -> None:
        url = self["url"]
        if url is not None and not url.startswith(("http://", "https://")):
            raise usage.UsageError(f"--url {escaped(url, 80)!r}: give an http:// or "
                                   "https:// URL")


class ListOptions(_RouterOptions):
    synopsis = "[--json] [--url URL]"
    optFlags = [["json", None, "Print the admin API's JSON instead of a table."]]


class _ControlOptions(_RouterOptions):
    synopsis = "ACCOUNT_ID [--url URL]"

    def parseArgs(self, account_id: str) -> None:  # type: ignore[override]
        if not ACCOUNT_ID.fullmatch(account_id):
            raise usage.UsageError(f"{escaped(account_id, 80)!r} is not an account id "
                                   "(see `linkrouter accounts list`)")
        self["id"] = account_id


class DisableOptions(_ControlOptions):
    pass


class EnableOptions(_ControlOptions):
    pass


class ResetOptions(_ControlOptions):
    pass


class AccountsOptions(usage.Options):
    synopsis = "list|disable|enable|reset|login"
    subCommands = [
        ["list", None, ListOptions, "Every upstream account's health (asks the router)."],
        ["disable", None, DisableOptions, "Keep an account out of rotation (every router)."],
        ["enable", None, EnableOptions, "Put a disabled account back in rotation."],
        ["reset", None, ResetOptions,
         "Clear an account's cooldown or pause and re-read its credential."],
        ["login", None, LoginOptions,
         "Log a Claude account in (or store a setup token) as a managed account."],
    ]

    def postOptions(self) -> None:
        if self.subCommand is None:
            raise usage.UsageError("choose one of: list, disable, enable, reset, login")


def _endpoint_parts(description: str) -> list[str]:
    """An endpoint string split at its unescaped colons, escapes removed."""
    parts, current, chars = [], "", iter(description)
    for char in chars:
        if char == "\\":
            current += next(chars, "")
        elif char == ":":
            parts.append(current)
            current = ""
        else:
            current += char
    return [*parts, current]


def listen_url(description: str) -> str | None:
    """
    The URL that reaches a C{tcp:} or C{ssl:} listener on this host (loopback for a
    listener on every interface), or C{None} when there is none to tell (another kind,
    or port 0).
    """
    kind, *rest = _endpoint_parts(description)
    if kind not in ("tcp", "ssl"):
        return None
    named = dict(p.split("=", 1) for p in rest if "=" in p)
    positional = [p for p in rest if "=" not in p]
    port = named.get("port") or (positional[0] if positional else "")
    if not port.isdigit() or int(port) == 0:
        return None
    host = named.get("interface") or "127.0.0.1"
    host = {"0.0.0.0": "127.0.0.1", "::": "::1"}.get(host, host)  # noqa: S104
    if ":" in host:
        host = f"[{host}]"
    return f"{'https' if kind == 'ssl' else 'http'}://{host}:{port}"


def router_url(given: str | None, listener: str, option: str) -> str:
    """
    C{--url} (C{given}), else the URL of C{listener}, the first admin (else client)
    listener, given by C{option}.
    """
    if given:
        return given.rstrip("/")
    found = listen_url(listener)
    if found is None:
        raise ConfigError("--url", f"cannot tell the router's address from {option} "
                                   f"{listener!r}; give --url http://HOST:PORT")
    return found


@frozen
class RouterClient:
    """Blocking calls to one router's admin API (CLI only)."""

    url: str
    key: str
    timeout: float = TIMEOUT

    def get(self, path: str) -> dict[str, Any]:
        """
        C{GET path}, answered as JSON.

        @raise ConfigError: no router answers (naming C{--url}).
        @raise APIError: the router's own refusal (its status, type and message).
        """
        # --url is http(s) only (checked with the command line)
        ask = urllib.request.Request(self.url + path, headers={  # noqa: S310
            "Authorization": "Bearer " + self.key, "Accept": "application/json"})
        context = None
        if self.url.startswith("https://") and _loopback(self.url):
            # our own router's certificate, reached by address: no name to check
            context = ssl.create_default_context()
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
        try:
            with urllib.request.urlopen(ask, timeout=self.timeout,  # noqa: S310
                                        context=context) as answer:
                document: dict[str, Any] = json.loads(answer.read())
                return document
        except urllib.error.HTTPError as e:
            raise _refusal(self.url, e) from None
        except (urllib.error.URLError, OSError, ValueError) as e:
            reason = getattr(e, "reason", None) or e
            raise NoRouter(self.url, getattr(reason, "strerror", None) or str(reason)
                           ) from None


class NoRouter(ConfigError):
    """No router answers at C{url}; C{str()} says so and names C{--url}."""

    def __init__(self, url: str, reason: str) -> None:
        super().__init__("--url", f"no router answers at {url} ({reason}); is it running? "
                                  "Give --url if it listens elsewhere")
        self.url, self.reason = url, reason


def _loopback(url: str) -> bool:
    host = url.split("://", 1)[1].split("/", 1)[0].rsplit(":", 1)[0].strip("[]")
    return host in ("localhost", "::1") or host.startswith("127.")


def _refusal(url: str, error: urllib.error.HTTPError) -> APIError:
    try:
        body = json.loads(error.read())
        kind, message = body["error"]["type"], body["error"]["message"]
    except (ValueError, KeyError, TypeError, OSError):
        kind, message = "api_error", f"HTTP {error.code}"
    return APIError(error.code, f"the router at {url} says: {escaped(str(message), 300)}",
                    str(kind))


# -- the table ------------------------------------------------------------------------


def _moment(text: object, form: str) -> str | None:
    if not isinstance(text, str):
        return None
    try:
        when = datetime.fromisoformat(text)
    except ValueError:
        return escaped(text, 40)
    return when.astimezone(timezone.utc).strftime(form)


def _window(utilization: object, name: str) -> str:
    """C{42% (resets 11-03 14:05Z)} from the account's C{utilization[name]}."""
    window = utilization.get(name) if isinstance(utilization, dict) else None
    percent = window.get("percent") if isinstance(window, dict) else None
    if not isinstance(percent, int | float) or isinstance(percent, bool):
        return "-"
    resets = _moment(window.get("resets_at"), "%m-%d %H:%MZ")  # type: ignore[union-attr]
    return f"{percent:.0f}%" + (f" (resets {resets})" if resets else "")


_COLUMNS = ["id", "name", "kind", "status", "5h", "7d", "requests", "last_used", "reason"]


def _row(account: dict[str, Any]) -> list[str]:
    requests = account.get("requests", account.get("requests_served"))
    cells = {
        "5h": _window(account.get("utilization"), "5h"),
        "7d": _window(account.get("utilization"), "7d"),
        "requests": f"{requests:,}" if isinstance(requests, int) else "-",
        "last_used": _moment(account.get("last_used_at"), "%Y-%m-%d %H:%MZ") or "never",
    }
    return [cells[c] if c in cells else
            escaped(str(account[c]), None) if account.get(c) not in (None, "") else "-"
            for c in _COLUMNS]


def table(accounts: list[dict[str, Any]], out: TextIO) -> None:
    """Accounts as an aligned table, one line each (every cell escaped)."""
    rows = [_row(a) for a in accounts]
    widths = [max([len(c)] + [len(row[i]) for row in rows]) for i, c in enumerate(_COLUMNS)]
    for row in [_COLUMNS] + rows:
        out.write("  ".join(v.ljust(w) for v, w in zip(row, widths)).rstrip() + "\n")


# -- the commands ---------------------------------------------------------------------


_DONE = {
    "disable": "disabled {who}: every router stops using it within 2 seconds",
    "enable": "enabled {who}: every router uses it again within 2 seconds",
    "reset": "reset {who}: every router clears its cooldown or pause and re-reads its "
             "credential within 2 seconds",
}


#: C{router(url)}: the client of the router at C{--url} (C{None}: the default).
Router = Callable[[str | None], RouterClient]
#: C{write(account_id, disabled, reset_at, at)}: the control, written to the store.
Write = Callable[[str, bool | None, int | None, int], object]


def accounts(options: usage.Options, out: TextIO, router: Router, write: Write) -> int:
    """Run one C{accounts} subcommand; its exit status."""
    command, sub = options.subCommand, options.subOptions
    if command == "list":
        document = router(sub["url"]).get("/api/accounts")
        if sub["json"]:
            out.write(json.dumps(document, indent=2) + "\n")
        else:
            table(document.get("accounts", []), out)
        return 0
    assert command in _DONE
    account_id: str = sub["id"]
    known, note = _ask_router(router, sub["url"], account_id)
    now = int(time.time())
    write(account_id, {"disable": True, "enable": False}.get(command),
          now if command == "reset" else None, now)
    name = known.get("name") if known else None
    who = account_id + (f" ({escaped(str(name), 80)})" if name else "")
    out.write(_DONE[command].format(who=who) + "\n")
    if note:
        out.write(note + "\n")
    return 0


def _ask_router(router: Router, url: str | None, account_id: str
                ) -> tuple[dict[str, Any] | None, str | None]:
    """
    The router's view of the account, or a note saying why none was had.

    @raise APIError: the router answers and has no such account (nothing is written).
    """
    try:
        client = router(url)
        return client.get("/api/accounts/" + urllib.parse.quote(account_id, safe="")), None
    except NoRouter as e:
        why = f"no router answers at {e.url} ({e.reason}) to check the id"
    except ConfigError as e:
        why = f"the id was not checked ({e})"
    return None, f"note: {why}; it applies to the account with this id once one exists"
