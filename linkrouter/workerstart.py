# -*- test-case-name: tests.unit.test_workers -*-
"""
The start-up work the supervisor of C{--workers} does once, before any worker starts,
so that N workers do not race each other over it and a bad configuration stops with
one line from one process: the data directory and missing secrets made, the store
opened and migrated, the endpoint strings and TLS files checked, the usage journals of
an earlier run handed to this run's workers, the workers' metrics directory emptied.

All of it blocks: call it before the reactor runs.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from twisted.logger import Logger

from linkrouter.config import Config
from linkrouter.database import Database, StoreError, redact_url
from linkrouter.journal import gather, journal_name
from linkrouter.parsing import ConfigError
from linkrouter.state import load_secrets
from linkrouter.store import prepare
from linkrouter.workermetrics import DIRECTORY
from linkrouter.workersockets import TLS_CERT, Binder, parse, plan

_log = Logger(namespace="linkrouter")

def metrics_directory(config: Config) -> Path:
    """Where each worker leaves its metrics for the others (L{linkrouter.workermetrics})."""
    return config.data_dir / DIRECTORY


def prepare_once(config: Config, reactor: Any) -> None:
    """See the module docstring. @raise ConfigError: naming the option at fault."""
    secrets = load_secrets(config)
    for path in secrets.generated:
        _log.info("Generated a new secret file (mode 0600): {path}", path=str(path))
    _check_listeners(config, reactor)
    _prepare_store(config)
    names = [journal_name(i) for i in range(config.workers)]
    try:
        taken = gather(config.data_dir, names[0], names[1:])
        _empty(metrics_directory(config))
    except OSError as e:
        raise ConfigError("--data-dir", f"cannot prepare {config.data_dir} for the "
                                        f"workers: {e.strerror}") from None
    if taken:
        _log.info("Worker 0 takes up the usage left in {n} journal(s) of an earlier run",
                  n=taken)
    if not config.admin_listen:
        _log.warn("With --workers {n} and the admin API on the client listeners, a console "
                  "session or an account login started through one worker is unknown to "
                  "the others: give the admin API its own --admin-listen (served by worker "
                  "0 alone) to use them", n=config.workers)


def _check_listeners(config: Config, reactor: Any) -> None:
    """Parse every endpoint string (without binding) and load the TLS files once."""
    for planned in plan(config):
        if planned.option == TLS_CERT:
            from linkrouter.tls import ReloadableTLS, TLSConfigError

            assert config.tls_cert is not None and config.tls_key is not None
            try:
                ReloadableTLS(config.tls_cert, config.tls_key, config.tls_chain)
            except TLSConfigError as e:
                raise ConfigError("--tls-cert", str(e)) from None
        else:
            parse(Binder(reactor), planned.description, planned.option)


def _prepare_store(config: Config) -> None:
    """Open and migrate the store once; a store that does not answer yet is the workers'."""
    try:
        before, _ = prepare(Database(config.database), config.store_timeout)
    except StoreError as e:
        if not e.transient:
            raise ConfigError("--database", str(e)) from None
        _log.warn("{problem}; starting anyway: router tokens are refused (503) until the "
                  "token store answers", problem=str(e))
        return
    _log.info("Token store {url} (schema version {before} -> current)",
              url=redact_url(config.database), before=before)


def _empty(directory: Path) -> None:
    """The workers' metrics directory, made (0700) or emptied of an earlier run's files."""
    directory.mkdir(mode=0o700, exist_ok=True)
    for path in directory.glob("metrics-*"):
        path.unlink()
