# -*- test-case-name: tests.unit.test_accountstate -*-
"""
What an account is and how it stands, in the words of the admin API (DESIGN §10): its
public kind, its status, why, and when it resumes; the pause that keeps headroom for the
subscription's owner (C{--pause-at-percent}); and which requests come from Claude Code
(C{--subscription-clients claude-code}).

Leaf helpers of L{linkrouter.accounts}: no account or pool here, only the rules.
"""

from __future__ import annotations

from attrs import frozen
from twisted.web.http_headers import Headers

from linkrouter.ratelimit import Window
from linkrouter.timefmt import isoformat

#: Every status an account can have, in the order one wins over the next.
STATUSES = ("disabled", "needs_login", "cooling", "paused", "ok")
#: The public kinds: a Claude login the router refreshes, a long-lived token (e.g. from
#: C{claude setup-token}), an Anthropic API key.
OAUTH, SETUP_TOKEN, API_KEY = "oauth", "setup-token", "api-key"
KINDS = (OAUTH, SETUP_TOKEN, API_KEY)
#: The kinds that draw on a Claude subscription (Pro/Max), not on API billing.
SUBSCRIPTION_KINDS = frozenset({OAUTH, SETUP_TOKEN})
#: The windows C{--pause-at-percent} looks at, and that are always shown.
PAUSE_WINDOWS = ("5h", "7d")
#: A pause for a window whose reset the upstream did not give lasts this long (then the
#: account's next answer says again).
PAUSE_WITHOUT_RESET = 60.0
#: C{--subscription-clients}: every client, or Claude Code's requests only.
SUBSCRIPTION_CLIENTS = ("any", "claude-code")

_CLAUDE_CODE_AGENT = b"claude-cli/"


@frozen
class Pause:
    """A pause an account's utilization calls for: until when, and why in words."""

    until: float
    reason: str


def pause_for(windows: dict[str, Window], percent: float, now: float) -> Pause | None:
    """
    The pause C{windows} call for under C{--pause-at-percent percent}: while the 5h or
    7d window's last report is at or above it, until that window resets (the later of the
    two when both are); C{None} when neither is.
    """
    over = []
    for name in PAUSE_WINDOWS:
        window = windows.get(name)
        if window is None or window.percent < percent:
            continue
        if window.resets_at is not None and window.resets_at <= now:
            continue  # reported before its reset: the window is fresh again
        until = window.resets_at if window.resets_at is not None else now + PAUSE_WITHOUT_RESET
        over.append((until, name, window))
    if not over:
        return None
    until, name, window = max(over, key=lambda found: found[0])
    return Pause(until, f"{name} utilization {window.percent:g}% is at or above "
                        f"--pause-at-percent {percent:g}%; paused until {isoformat(until)}")


def utilization_json(windows: dict[str, Window]) -> dict[str, dict[str, object]]:
    """
    C{{"5h": {"percent", "resets_at"}, "7d": {…}}} (percent 0..100, resets_at ISO 8601;
    both C{None} for a window the upstream has not reported), plus any other window it did.
    """
    shown: dict[str, dict[str, object]] = {}
    for name in (*PAUSE_WINDOWS, *sorted(set(windows) - set(PAUSE_WINDOWS))):
        window = windows.get(name)
        shown[name] = {"percent": window.percent if window else None,
                       "resets_at": isoformat(window.resets_at) if window else None}
    return shown


def from_claude_code(headers: Headers) -> bool:
    """
    Whether a request says it comes from Claude Code: C{User-Agent: claude-cli/…} and
    C{x-app: cli}. A claim, not a proof: any client can send both.
    """
    agent = (headers.getRawHeaders(b"user-agent") or [b""])[-1]
    app = (headers.getRawHeaders(b"x-app") or [b""])[-1]
    return agent.startswith(_CLAUDE_CODE_AGENT) and app.strip().lower() == b"cli"


SUBSCRIPTION_REFUSED = (
    "This router keeps its Claude subscription accounts (OAuth and setup-token logins) for "
    "Claude Code (--subscription-clients claude-code), and this request does not come from "
    "Claude Code (User-Agent claude-cli/... with x-app: cli); the router has no API-key "
    "account to serve it. Use Claude Code, or ask the operator to add an API-key account "
    "(--upstream-api-key).")
