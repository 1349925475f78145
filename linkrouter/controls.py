# -*- test-case-name: tests.unit.test_controls,tests.integration.test_account_controls -*-
"""
An operator's say over the upstream accounts (DESIGN §10): disable, enable and reset, by
the account's stable id, kept in the store (table C{account_controls}) so it survives a
restart and reaches every instance of a fleet.

The queries (L{ControlQueries}) run like the rest of the store's
(L{linkrouter.store.TokenStore}). L{ControlsBook} is loaded before the listeners open and
then polled every second, like the limits (L{linkrouter.limitsbook}): it keeps each
account's control in memory and applies it to the pool, so a change made anywhere (this
router's admin API, another router's, the CLI writing the store) holds everywhere within
about two seconds. A change through this router's admin API holds at once.

C{disabled} is a state: it is applied to every account with that id, including one that
joins the pool later (a managed account logged in at runtime). A reset is an event: each
one (a C{reset_at} newer than the last one seen for the id) clears the account's
cooldown and pause and re-reads its credential once, on each router that has the account
when the reset is first seen; old resets are never replayed at start-up.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from attrs import define, field, frozen
from twisted.internet.defer import Deferred
from twisted.logger import Logger

from linkrouter.database import Database, StoreError, _Cursor, _reason, redact_url
from linkrouter.outage import Outage
from linkrouter.polling import Polled
from linkrouter.records import _maybe_moment, _moment
from linkrouter.timefmt import isoformat

_COLUMNS = "account_id, disabled, reset_at, updated_at"

_log = Logger(namespace="linkrouter")


@frozen
class Control:
    """
    The operator's control of one account.

    @ivar reset_at: when the last reset was asked for (Unix seconds; each reset of an
        account stores a larger value than the one before), C{None} if never.
    """

    account_id: str
    disabled: bool = False
    reset_at: int | None = None
    updated_at: int = 0

    def to_json(self) -> dict[str, Any]:
        return {"account_id": self.account_id, "disabled": self.disabled,
                "reset_at": isoformat(self.reset_at), "updated_at": isoformat(self.updated_at)}


def _control(row: tuple[Any, ...]) -> Control:
    account_id, disabled, reset_at, updated_at = row
    return Control(str(account_id), bool(disabled), _maybe_moment(reset_at), _moment(updated_at))


@frozen
class ControlQueries:
    """Each control operation as a function of a DB-API cursor (same SQL on both stores)."""

    placeholder: str

    def _sql(self, text: str) -> str:
        return text.replace("?", self.placeholder)

    def set_control(self, cursor: _Cursor, account_id: str, disabled: bool | None,
                    reset_at: int | None, at: int) -> Control:
        """
        Set an account's C{disabled} flag (unless C{None}) and ask for a reset at
        C{reset_at} (unless C{None}), stamped C{at}; the control as it now is. A reset
        always stores a larger C{reset_at} than the one before (one second more when the
        writer's clock says otherwise), so every router sees it as new.
        """
        cursor.execute(self._sql("INSERT INTO account_controls (account_id, disabled, "
                                 "updated_at) VALUES (?, 0, ?) ON CONFLICT (account_id) "
                                 "DO NOTHING"), (account_id, at))
        sets, values = ["updated_at = ?"], [at]
        if disabled is not None:
            sets.append("disabled = ?")
            values.append(int(disabled))
        if reset_at is not None:
            sets.append("reset_at = CASE WHEN reset_at IS NULL OR reset_at < ? THEN ? "
                        "ELSE reset_at + 1 END")
            values += [reset_at, reset_at]
        cursor.execute(self._sql(f"UPDATE account_controls SET {', '.join(sets)} "
                                 "WHERE account_id = ?"), (*values, account_id))
        cursor.execute(self._sql(f"SELECT {_COLUMNS} FROM account_controls "
                                 "WHERE account_id = ?"), (account_id,))
        return _control(cursor.fetchone())

    def controls_since(self, cursor: _Cursor, since: int) -> list[Control]:
        """The controls changed at or after C{since}, by account id."""
        cursor.execute(self._sql(f"SELECT {_COLUMNS} FROM account_controls "
                                 "WHERE updated_at >= ? ORDER BY account_id"), (since,))
        return [_control(row) for row in cursor.fetchall()]

    def all_controls(self, cursor: _Cursor) -> list[Control]:
        """Every control, by account id."""
        cursor.execute(f"SELECT {_COLUMNS} FROM account_controls ORDER BY account_id")
        return [_control(row) for row in cursor.fetchall()]


@define(eq=False)
class ControlsBook(Polled):
    """
    Every account's control, applied to the pool.

    @ivar store: the token store (C{all_controls()}, C{controls_since(at)}).
    @ivar pool: the account pool (C{accounts}, C{find(id)}).
    @ivar loaded_at: clock time at which the last good poll started, C{None} before.
    """

    store: Any
    pool: Any
    clock: Any
    loaded_at: float | None = None
    outage: Outage | None = None
    _controls: dict[str, Control] = field(factory=dict)
    _resets_seen: dict[str, int] = field(factory=dict)
    _full_at: float | None = None

    def __attrs_post_init__(self) -> None:
        if self.outage is None:
            self.outage = Outage(self.clock, "account controls",
                                 "keeping the account controls already known")

    def control(self, account_id: str) -> Control | None:
        """The control of C{account_id}, C{None} when it has none."""
        return self._controls.get(account_id)

    def loaded(self, controls: Iterable[Control]) -> None:
        """Take every control, read just now (at start-up): no reset is replayed."""
        self._controls = {}
        self._take(controls, replay=False)
        self._loaded_now()
        self.apply()

    def changed(self, control: Control) -> None:
        """
        A change made by this process: it holds at once. Its reset counts as seen (the
        caller resets the account itself).
        """
        self._take([control], replay=False)
        self.apply()

    async def refresh(self) -> None:
        """Poll the store (the changes since the last good poll, or everything); apply."""
        first = self.loaded_at is None
        read = await self._read(self.store.all_controls, self.store.controls_since)
        if read is None:
            return
        started, full, controls = read
        if full:
            self._controls = {}
        self._take(controls, replay=not first)
        self._done(started, full)
        self.apply()

    def _take(self, controls: Iterable[Control], replay: bool) -> None:
        """
        Keep C{controls}. Their resets count as seen unless C{replay}, and for accounts
        this pool does not have (a reset is for the account as it is now).
        """
        for control in controls:
            self._controls[control.account_id] = control
            if control.reset_at is not None and (
                    not replay or self.pool.find(control.account_id) is None):
                seen = self._resets_seen.get(control.account_id, control.reset_at)
                self._resets_seen[control.account_id] = max(seen, control.reset_at)

    def apply(self) -> None:
        """Each account in the pool as its control says; call when accounts join."""
        for account in list(self.pool.accounts):
            control = self._controls.get(account.id)
            disabled = control is not None and control.disabled
            if account.disabled != disabled:
                account.disabled = disabled
                _log.info("Account {id} is {what} by the operator", id=account.id,
                          what="disabled" if disabled else "enabled")
            if control is None or control.reset_at is None:
                continue
            if control.reset_at > self._resets_seen.get(account.id, -1):
                self._resets_seen[account.id] = control.reset_at
                # not awaited: a slow credential read must not hold up the pollers
                Deferred.fromCoroutine(_reset(account))


async def _reset(account: Any) -> None:
    try:
        await account.reset()
    except Exception:  # logged; the next reset may do better
        _log.failure("Resetting account {id} failed", id=account.id)


def preload(database: Database, timeout: float | None, book: ControlsBook) -> None:
    """Load C{book} from the store, blocking (start-up only, before the listeners)."""
    from linkrouter.books import _result
    from linkrouter.store import BlockingRunner, TokenStore

    connection = database.connect(timeout)
    try:
        store = TokenStore(database.queries(), BlockingRunner(connection))
        book.loaded(_result(store.all_controls()))
    except StoreError:
        raise
    except Exception as e:
        raise StoreError(f"cannot read account controls from {redact_url(database.url)}: "
                         f"{_reason(e)}", True) from None
    finally:
        connection.close()
