# -*- test-case-name: tests.unit.test_cli,tests.unit.test_cli_limits -*-
"""
C{linkrouter tokens ...}: issue, list, show, limit and revoke router tokens, on the
daemon's store through L{TokenAdmin} (the admin API's own checks).

A token's limits come from flags (C{--rpm 60 --concurrency 4 --budget 1d=25 --model
'claude-sonnet-*'}), built into the limits JSON of DESIGN §9 and checked with
L{Limits.from_json} while the command line is parsed: a bad flag is a usage error naming
the flag and the field, and nothing reaches the store.
"""

from __future__ import annotations

import json
from decimal import Decimal, InvalidOperation
from typing import TYPE_CHECKING, Any, TextIO

from twisted.python import usage

from linkrouter.labels import escaped
from linkrouter.limits import WINDOWS, Limits, LimitsError

if TYPE_CHECKING:
    from linkrouter.admin import TokenAdmin

_WINDOW_NAMES = ", ".join(WINDOWS)
_LIMIT_FLAGS = "--rpm, --concurrency, --budget or --model"


class LimitFlags(usage.Options):
    """
    The limits flags, shared by C{tokens issue} and C{tokens limit}; after parsing,
    C{self["limits"]} is the L{Limits} they give, or C{None} when none was given.
    """

    def __init__(self) -> None:
        super().__init__()
        self["rpm"] = self["concurrency"] = None
        self["budget"] = []
        self["model"] = []
        self["limits"] = None

    def opt_rpm(self, value: str) -> None:
        """Requests a minute the token may start (a whole number, at least 1)."""
        self["rpm"] = _whole("--rpm", value)

    def opt_concurrency(self, value: str) -> None:
        """Requests the token may have in flight at once (a whole number, at least 1)."""
        self["concurrency"] = _whole("--concurrency", value)

    def opt_budget(self, value: str) -> None:
        """WINDOW=USD: most spent in a trailing 5h, 1d, 7d or 30d, e.g. 1d=25 (repeatable)."""
        self["budget"].append(value)

    def opt_model(self, value: str) -> None:
        """A model it may use, as a pattern: 'claude-sonnet-*' (repeatable; default any)."""
        self["model"].append(value)

    @property
    def limit_flags_given(self) -> bool:
        return (self["rpm"] is not None or self["concurrency"] is not None
                or bool(self["budget"]) or bool(self["model"]))

    def postOptions(self) -> None:
        if self.limit_flags_given:
            self["limits"] = limits_from_flags(self["rpm"], self["concurrency"],
                                               self["budget"], self["model"])


def _whole(flag: str, value: str) -> int:
    try:
        return int(value.strip())
    except ValueError:
        raise usage.UsageError(f"{flag} {value!r}: must be a whole number") from None


def _budgets(values: list[str]) -> dict[str, Any]:
    """C{--budget WINDOW=USD} values as the C{budget_usd} object (amounts as Decimal)."""
    budgets: dict[str, Any] = {}
    for value in values:
        window, equals, amount = value.partition("=")
        window = window.strip()
        if not equals or not window:
            raise usage.UsageError(
                f"--budget {value!r}: use WINDOW=USD, e.g. 1d=25 (windows {_WINDOW_NAMES})")
        if window in budgets:
            raise usage.UsageError(f"--budget {value!r}: window {window} given twice")
        try:
            budgets[window] = Decimal(amount.strip().removeprefix("$"))
        except InvalidOperation:
            # Limits.from_json names the problem (and the field) for a non-number.
            budgets[window] = amount
    return budgets


def limits_from_flags(rpm: int | None, concurrency: int | None, budget: list[str],
                      models: list[str]) -> Limits:
    """
    The L{Limits} the flags give, checked as the admin API checks a C{limits} object.

    @raise usage.UsageError: naming the flag, its value and the field at fault.
    """
    budgets = _budgets(budget)
    document: dict[str, Any] = {"rpm": rpm, "concurrency": concurrency,
                                "budget_usd": budgets or None, "models": models or None}
    try:
        limits = Limits.from_json(document)
    except LimitsError as e:
        raise usage.UsageError(f"{_flag_of(e.field, budget, models)}: {e}") from None
    assert limits is not None
    return limits


def _flag_of(field: str, budget: list[str], models: list[str]) -> str:
    """The flag (and value) that gave the limits field C{field}."""
    key = field.removeprefix("limits.")
    if key.startswith("budget_usd."):
        window = key.removeprefix("budget_usd.")
        given = [v for v in budget if v.partition("=")[0].strip() == window]
        return f"--budget {given[0]!r}" if given else "--budget"
    if key.startswith("models["):
        index = int(key.removeprefix("models[").rstrip("]"))
        return f"--model {models[index]!r}"
    return "--" + key.partition(".")[0].partition("[")[0].replace("budget_usd", "budget")


_LIMITS_HELP = (
    "Limits: --rpm and --concurrency cap requests a minute and at once, "
    "--budget WINDOW=USD caps the cost in a trailing window, --model restricts the "
    "upstream models (fnmatch patterns). A token without limits of its own gets "
    "--default-limits."
)


class IssueOptions(LimitFlags):
    longdesc = "Issue a router token, printed once as JSON. " + _LIMITS_HELP
    synopsis = ("[--label LABEL] [--ttl-hours HOURS] [--rpm N] [--concurrency N] "
                "[--budget WINDOW=USD]... [--model PATTERN]...")
    optParameters = [
        ["label", "l", "", "Who or what the token is for."],
        ["ttl-hours", "t", 24, "Hours until the token expires.", int],
    ]


class LimitOptions(LimitFlags):
    longdesc = ("Replace a token's limits with those given (or remove them with --clear) "
                "and print its record. " + _LIMITS_HELP)
    synopsis = ("TOKEN_ID (--clear | [--rpm N] [--concurrency N] [--budget WINDOW=USD]... "
                "[--model PATTERN]...)")
    optFlags = [["clear", None, "Remove the token's limits (the default limits apply)."]]

    def parseArgs(self, token_id: str) -> None:  # type: ignore[override]
        self["id"] = token_id

    def postOptions(self) -> None:
        if self["clear"] and self.limit_flags_given:
            raise usage.UsageError(f"--clear takes no other limits ({_LIMIT_FLAGS})")
        if not self["clear"] and not self.limit_flags_given:
            raise usage.UsageError(f"give the new limits ({_LIMIT_FLAGS}) or --clear")
        super().postOptions()


class ListOptions(usage.Options):
    optFlags = [["json", None, "Print JSON instead of a table."]]


class _IdOptions(usage.Options):
    synopsis = "TOKEN_ID"

    def parseArgs(self, token_id: str) -> None:  # type: ignore[override]
        self["id"] = token_id


class ShowOptions(_IdOptions):
    pass


class RevokeOptions(_IdOptions):
    pass


class TokensOptions(usage.Options):
    synopsis = "issue|list|show|limit|revoke"
    subCommands = [
        ["issue", None, IssueOptions, "Issue a new router token (printed once)."],
        ["list", None, ListOptions, "List tokens (ids and metadata, never tokens)."],
        ["show", None, ShowOptions, "Show one token's record."],
        ["limit", None, LimitOptions, "Replace (or --clear) a token's limits."],
        ["revoke", None, RevokeOptions, "Revoke a token by id."],
    ]

    def postOptions(self) -> None:
        if self.subCommand is None:
            raise usage.UsageError("choose one of: issue, list, show, limit, revoke")


def compact_limits(limits: dict[str, Any] | None) -> str:
    """A token's limits JSON in a few words: C{rpm=60 conc=4 1d=$25 models=claude-*}."""
    if not limits:
        return "-"
    words = []
    if "rpm" in limits:
        words.append(f"rpm={limits['rpm']}")
    if "concurrency" in limits:
        words.append(f"conc={limits['concurrency']}")
    words += [f"{window}=${amount}" for window, amount in limits.get("budget_usd", {}).items()]
    if limits.get("models"):
        words.append("models=" + ",".join(limits["models"]))
    return " ".join(words)


_COLUMNS = ["id", "label", "created_at", "expires_at", "revoked_at", "last_used_at",
            "request_count", "limits"]


def _cell(record: dict[str, Any], column: str) -> str:
    if column == "limits":
        value: Any = compact_limits(record.get("limits"))
    else:
        value = record.get(column)
    # Every cell escaped: a label stored by an older version (or any other writer) must not
    # reach the terminal raw.
    return escaped(str(value), None) if value is not None else "-"


def table(records: list[dict[str, Any]], out: TextIO) -> None:
    """Token records as an aligned table, one line each, the limits in short form."""
    rows = [[_cell(r, c) for c in _COLUMNS] for r in records]
    widths = [max([len(c)] + [len(row[i]) for row in rows]) for i, c in enumerate(_COLUMNS)]
    for row in [_COLUMNS] + rows:
        out.write("  ".join(v.ljust(w) for v, w in zip(row, widths)).rstrip() + "\n")


def _print(document: dict[str, Any], out: TextIO) -> None:
    out.write(json.dumps(document, indent=2) + "\n")


async def tokens(admin: TokenAdmin, options: usage.Options, out: TextIO) -> int:
    """Run one C{tokens} subcommand against C{admin}; its exit status."""
    from linkrouter.admin import IssueRequest, UpdateRequest

    command, sub = options.subCommand, options.subOptions
    if command == "issue":
        limits = sub["limits"]
        ask = IssueRequest.from_json({
            "label": sub["label"], "ttl_hours": sub["ttl-hours"],
            "limits": None if limits is None else limits.to_json(),
        })
        _print(await admin.issue(ask), out)
    elif command == "list":
        records = (await admin.list())["tokens"]
        if sub["json"]:
            _print({"tokens": records}, out)
        else:
            table(records, out)
    elif command == "show":
        _print(await admin.show(sub["id"]), out)
    elif command == "limit":
        _print(await admin.update(sub["id"], UpdateRequest(limits=sub["limits"],
                                                           set_limits=True)), out)
    elif command == "revoke":
        _print(await admin.revoke(sub["id"]), out)
    return 0
