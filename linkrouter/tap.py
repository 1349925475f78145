# -*- test-case-name: tests.unit.test_tap,tests.integration.test_tap -*-
"""
C{twistd linkrouter}: options (each also read from the environment) and C{makeService}.

Bad configuration stops start-up with one line naming the option and exit status 1.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, NoReturn

from twisted.python import usage

from linkrouter import __version__
from linkrouter.config import Config
from linkrouter.config import resolve as resolve_config
from linkrouter.options import (
    ADMIN_LISTEN,
    ALLOW_UPSTREAM,
    CLAUDE_CODE_HOME,
    LISTEN,
    METRICS_LISTEN,
    MODEL_ALIAS,
    OPTIONS,
    Many,
    accumulator,
    usage_table,
)
from linkrouter.parsing import ConfigError
from linkrouter.textlog import TEXT_OBSERVER

if TYPE_CHECKING:
    from linkrouter.service import RouterService
    from linkrouter.workers import Supervisor


class Options(usage.Options):
    """
    Run linkrouter: share Claude subscriptions through router tokens (la_sk_...).

    Every option can also come from the environment variable shown; flags win.
    """

    synopsis = "[options]"
    longdesc = (
        "Run linkrouter, an Anthropic API proxy that authenticates clients with router "
        "tokens (la_sk_...) and forwards their requests with the team's Claude credential. "
        "With no options it listens on tcp:8080 and keeps its state in "
        "$LINKROUTER_DATA_DIR (default ~/.local/state/linkrouter)."
    )

    optFlags, optParameters = usage_table()

    def __init__(self, environ: Mapping[str, str] | None = None, *,
                 daemon: bool | None = None) -> None:
        super().__init__()
        self.environ = os.environ if environ is None else environ
        self._daemon = daemon
        for option in OPTIONS:
            if isinstance(option, Many):
                self[option.key] = []

    @property
    def daemon(self) -> bool:
        """
        Whether these options run a daemon (twistd, the .tac): twistd sets C{parent} to
        its own options; the .tac says so with C{daemon=True}.
        """
        if self._daemon is not None:
            return self._daemon
        return getattr(self, "parent", None) is not None

    opt_listen = accumulator(LISTEN)
    opt_admin_listen = accumulator(ADMIN_LISTEN)
    opt_claude_code_home = accumulator(CLAUDE_CODE_HOME)
    opt_metrics_listen = accumulator(METRICS_LISTEN)
    opt_model_alias = accumulator(MODEL_ALIAS)
    opt_allow_upstream = accumulator(ALLOW_UPSTREAM)

    def opt_version(self) -> NoReturn:
        """Print linkrouter's version and exit."""
        # setup.cfg's metadata version reads this same attribute.
        sys.stdout.write(f"linkrouter {__version__}\n")
        sys.exit(0)

    def postOptions(self) -> None:
        raw = {key.replace("-", "_"): value for key, value in self.items()}
        try:
            self.config: Config = resolve_config(raw, self.environ)
        except ConfigError as e:
            raise ConfigUsageError(str(e)) from None
        parent = getattr(self, "parent", None)
        if parent is not None and not parent.get("logger"):
            # twistd builds its log observer from its own --logger after parsing options.
            if self.config.log_format == "json":
                parent["logger"] = "linkrouter.logs.json_observer"
            elif _to_stdout(parent):
                parent["logger"] = TEXT_OBSERVER

    def parseOptions(self, options: Any = None) -> None:
        #: The options as given, which the workers of C{--workers} are started with.
        self.args: list[str] = list(sys.argv[1:] if options is None else options)
        try:
            super().parseOptions(options)
        except ConfigUsageError as e:
            if not self.daemon:
                raise
            _stop(str(e))


def _to_stdout(twistd: Any) -> bool:
    """Whether twistd's own log would be text on standard output (C{-n}, no file)."""
    return bool(twistd.get("nodaemon") and not twistd.get("syslog")
                and twistd.get("logfile") in (None, "", "-"))


class ConfigUsageError(usage.UsageError):
    """A value is wrong (as opposed to an unknown flag)."""


def _stop(line: str) -> NoReturn:
    """Under twistd: one line on stderr and exit status 1, instead of a usage dump."""
    sys.stderr.write(f"linkrouter: configuration error: {line}\n")
    raise SystemExit(1)


def makeService(options: Options, reactor: Any = None) -> RouterService | Supervisor:
    """
    Build the router service from parsed options (see L{linkrouter.service}), or with
    C{--workers} above 1 their supervisor (L{linkrouter.workers}).

    Under twistd (or the .tac: L{Options.daemon}) a configuration error stops the process
    with one line, and the service handles SIGTERM and SIGHUP; otherwise the error is
    raised. A reactor passed in is used either way.
    """
    from linkrouter.service import makeService as build_service

    daemon = options.daemon
    try:
        service = build_service(options.config, reactor, args=getattr(options, "args", ()))
    except ConfigError as e:
        if not daemon:
            raise
        _stop(str(e))
    if daemon:
        service.on_config_error = lambda error: _stop(str(error))
        service.handle_signals = True
    if hasattr(service, "relay_logs"):  # the supervisor of --workers
        from linkrouter.workers import logs_elsewhere

        service.relay_logs = logs_elsewhere(getattr(options, "parent", None))
    return service
