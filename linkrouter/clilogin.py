# -*- test-case-name: tests.unit.test_clilogin,tests.integration.test_login -*-
"""
C{linkrouter accounts login NAME [--setup-token]}: add a managed account (DESIGN §10)
from the command line, on the daemon's store, so every router of a fleet picks it up
within 5 s without a restart.

Without C{--setup-token} it prints the authorize URL (alone on its line of standard
output), reads the pasted C{code#state} line from standard input, trades the code at
C{--oauth-token-url} and stores the pair. With C{--setup-token} it reads a token printed
by C{claude setup-token} instead (without echo at a terminal). Either way the line comes
from standard input, so a script can pipe it; the new account's JSON (never a token) is
printed last, and prompts go to standard error.

The console script (L{linkrouter.cli}) hands in the L{Logins} on the daemon's store.
"""

from __future__ import annotations

import getpass
import json
from collections.abc import Callable, Coroutine
from typing import TYPE_CHECKING, Any, TextIO

from twisted.python import usage

if TYPE_CHECKING:  # parsing the command line loads no more than this
    from linkrouter.login import Logins

#: Runs a coroutine whose every await has already fired (the CLI's blocking store).
RunNow = Callable[[Coroutine[Any, Any, Any]], Any]


class LoginOptions(usage.Options):
    synopsis = "NAME [--setup-token]"
    longdesc = (
        "Log a Claude account in as the managed account NAME: open the URL printed, sign "
        "in, and paste the code#state the page shows (read from standard input). With "
        "--setup-token, paste a token printed by `claude setup-token` instead. The account "
        "is stored sealed in the daemon's store; running routers use it within 5 s."
    )
    optFlags = [["setup-token", None,
                 "Store a token printed by `claude setup-token` (read from standard input)."]]

    def parseArgs(self, name: str) -> None:  # type: ignore[override]
        self["name"] = name


def _line(stdin: TextIO, err: TextIO, prompt: str, secret: bool = False) -> str:
    """One line of standard input (without echo for a secret typed at a terminal)."""
    if secret and stdin.isatty():
        return getpass.getpass(prompt, stream=err)
    err.write(prompt)
    err.flush()
    return stdin.readline()


def login(options: usage.Options, logins: Logins, run: RunNow, out: TextIO, stdin: TextIO,
          err: TextIO) -> int:
    """
    Run C{accounts login}; its exit status.

    @raise linkrouter.errors.APIError: a bad name, paste or token, or a refused code.
    """
    name = run(logins.available(options["name"]))  # before anything is pasted
    if options["setup-token"]:
        pasted = _line(stdin, err, "Paste the token `claude setup-token` printed: ",
                       secret=True)
        account = run(logins.setup_token(name, pasted))
    else:
        pending = run(logins.begin(name))
        err.write("Open this URL in a browser, sign in to the Claude account, then paste "
                  "the code the page shows (code#state):\n")
        err.flush()
        out.write(pending.authorize_url + "\n")
        out.flush()
        account = run(logins.complete(pending.login_id, _line(stdin, err, "> ")))
    out.write(json.dumps(account, indent=2) + "\n")
    return 0
