"""
The policy stage on a fake clock: each limit refusing, then admitting again when it frees
up; the model rule reading a Messages body; the spend book's local and polled spend.
"""

from __future__ import annotations

import io
import json
from decimal import Decimal
from pathlib import Path
from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.test.requesthelper import DummyRequest

from linkrouter.admission import Admitter, Refused, body_models
from linkrouter.database import Database
from linkrouter.dialects import Outgoing
from linkrouter.errors import APIError
from linkrouter.limits import Limits
from linkrouter.limitsbook import LimitsBook
from linkrouter.policy import Admission, Policy
from linkrouter.spendbook import HOUR, SpendBook
from linkrouter.store import BlockingRunner, TokenStore, UsageDelta, prepare

TOKEN = "6c8d8c85-0000-4000-8000-000000000001"
START = 1_800_000_000.0  # on the hour


def limits(**given: Any) -> Limits:
    found = Limits.from_json(given)
    assert found is not None
    return found


def request(body: Any = None, encoding: bytes | None = None) -> DummyRequest:
    req = DummyRequest([b"v1", b"messages"])
    req.method = b"POST"
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    req.content = io.BytesIO(raw)
    if encoding is not None:
        req.requestHeaders.setRawHeaders(b"content-encoding", [encoding])
    return req


class AdmitterTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.clock.advance(START)
        self.book = LimitsBook(None, self.clock)
        self.book.loaded([])
        self.spend = SpendBook(None, self.clock)
        self.spend.loaded([])
        self.admitter = Admitter(Policy(self.clock), self.book, self.spend)

    def admit(self, req: DummyRequest | None = None, model: str | None = None) -> Admission:
        req = req if req is not None else request({"model": "claude-sonnet-4-5"})
        outgoing = Outgoing(b"/v1/messages", req.content, model=model)
        return self.successResultOf(Deferred.fromCoroutine(
            self.admitter.admit(req, TOKEN, outgoing)))

    def refused(self, req: DummyRequest | None = None, model: str | None = None) -> Refused:
        req = req if req is not None else request({"model": "claude-sonnet-4-5"})
        outgoing = Outgoing(b"/v1/messages", req.content, model=model)
        failure = self.failureResultOf(Deferred.fromCoroutine(
            self.admitter.admit(req, TOKEN, outgoing)), APIError)
        assert isinstance(failure.value, Refused), failure.value
        return failure.value

    def test_not_loaded(self) -> None:
        """Before the limits are loaded no token is admitted: 503, not fail-open."""
        self.admitter.limits = LimitsBook(None, self.clock)
        req = request({"model": "x"})
        failure = self.failureResultOf(Deferred.fromCoroutine(self.admitter.admit(
            req, TOKEN, Outgoing(b"/v1/messages", req.content))), APIError)
        self.assertEqual(failure.value.status, 503)

    def test_unlimited(self) -> None:
        """A token without limits (and no default) is admitted, the body unread."""
        req = request(b"not json at all")
        self.admit(req)
        self.assertEqual(req.content.tell(), 0)

    def test_rpm_frees_up(self) -> None:
        """The rpm+1st request waits until the oldest admit leaves the 60 s window."""
        self.book.changed(TOKEN, limits(rpm=2))
        self.admit().release()
        self.clock.advance(10)
        self.admit().release()
        refused = self.refused()
        self.assertEqual((refused.status, refused.limit, refused.retry_after), (429, "rpm", 50))
        self.clock.advance(50)
        self.admit()

    def test_concurrency_frees_up(self) -> None:
        """A slot frees when the admitted request is released."""
        self.book.changed(TOKEN, limits(concurrency=1))
        first = self.admit()
        self.assertEqual(self.refused().limit, "concurrency")
        first.release()
        self.admit()

    def test_budget_frees_up(self) -> None:
        """Spend at the limit refuses until that hour has left the window."""
        self.book.changed(TOKEN, limits(budget_usd={"5h": 1}))
        self.spend.record(TOKEN, int(START), 10**12)  # $1 in the first hour
        refused = self.refused()
        self.assertEqual((refused.limit, refused.retry_after), ("budget_usd.5h", 5 * HOUR))
        self.assertIn("$1.00 was spent", str(refused))
        self.clock.advance(5 * HOUR + 59 * 60)  # that hour still starts the window
        self.refused()
        self.clock.advance(60)
        self.admit()

    def test_budget_below_is_admitted(self) -> None:
        self.book.changed(TOKEN, limits(budget_usd={"1d": 0.5}))
        self.spend.record(TOKEN, int(START), 499_999_999_999)
        self.admit()

    def test_model_rule_reads_messages_body(self) -> None:
        self.book.changed(TOKEN, limits(models=["claude-sonnet-*"]))
        self.admit(request({"model": "claude-sonnet-4-5", "max_tokens": 1}))
        refused = self.refused(request({"model": "claude-opus-4-1"}))
        self.assertEqual((refused.status, refused.error_type), (403, "permission_error"))

    def test_model_rule_uses_routed_model(self) -> None:
        """Bedrock/Vertex give the model: the body is not what is checked."""
        self.book.changed(TOKEN, limits(models=["claude-sonnet-*"]))
        self.refused(request({"model": "claude-sonnet-4-5"}), model="claude-opus-4-1")
        self.admit(request({"model": "claude-opus-4-1"}), model="claude-sonnet-4-5")

    def test_model_rule_batches(self) -> None:
        """Every request of a message batch is checked."""
        self.book.changed(TOKEN, limits(models=["claude-sonnet-*"]))
        batch = {"requests": [{"custom_id": "a", "params": {"model": "claude-sonnet-4-5"}},
                              {"custom_id": "b", "params": {"model": "claude-opus-4-1"}}]}
        self.assertEqual(self.refused(request(batch)).limit, "models")

    def test_model_rule_counts_one_admit(self) -> None:
        """A batch naming several allowed models is one request for rpm."""
        self.book.changed(TOKEN, limits(models=["claude-*"], rpm=1))
        batch = {"requests": [{"params": {"model": "claude-a"}},
                              {"params": {"model": "claude-b"}}]}
        self.admit(request(batch))
        self.assertEqual(self.refused(request(batch)).limit, "rpm")

    def test_default_limits(self) -> None:
        """The default applies to tokens without their own limits only."""
        self.book.default = limits(rpm=1)
        self.admit()
        self.refused()
        self.book.changed(TOKEN, limits(rpm=5))
        self.admit()
        self.book.changed(TOKEN, None)
        self.refused()


class BodyModelsTests(SynchronousTestCase):
    def test_duplicate_model(self) -> None:
        raw = b'{"model": "claude-sonnet-4-5", "model": "claude-opus-4-1"}'
        error = self.assertRaises(APIError, body_models, request(raw), io.BytesIO(raw))
        self.assertEqual(error.status, 400)

    def test_encoded(self) -> None:
        req = request({"model": "x"}, encoding=b"gzip")
        self.assertRaises(APIError, body_models, req, req.content)

    def test_identity_encoding_is_plain(self) -> None:
        req = request({"model": "x"}, encoding=b"identity")
        self.assertEqual(body_models(req, req.content), ["x"])

    def test_not_json_names_no_model(self) -> None:
        req = request(b"\xff\xfe garbage")
        self.assertEqual(body_models(req, req.content), [None])

    def test_non_string_model_matches_nothing_plain(self) -> None:
        req = request({"model": ["claude-sonnet-4-5"]})
        (model,) = body_models(req, req.content)
        self.assertFalse(limits(models=["claude-sonnet-*"]).allows_model(model))

    def test_escaped_key_cannot_hide_a_second_model(self) -> None:
        """
        A key spelt with escapes (C{mod\\u0065l}) is the key C{model} to a JSON parser:
        the quick path must not take the plain one and miss it.
        """
        raw = b'{"mod\\u0065l": "claude-opus-4-1", "model": "claude-sonnet-4-5"}'
        error = self.assertRaises(APIError, body_models, request(raw), io.BytesIO(raw))
        self.assertEqual(error.status, 400)
        raw = b'{"mod\\u0065l": "claude-opus-4-1"}'
        self.assertEqual(body_models(request(raw), io.BytesIO(raw)), ["claude-opus-4-1"])

    def test_large_body_with_escapes(self) -> None:
        """A Claude Code-sized body with escaped text: its one model is found."""
        text = 'line one\n"quoted" model \t tab ' * 5000
        body = {"system": text, "model": "claude-sonnet-4-5",
                "messages": [{"role": "user", "content": text}]}
        req = request(body)
        self.assertEqual(body_models(req, req.content), ["claude-sonnet-4-5"])

    def test_model_named_in_a_value_too(self) -> None:
        """The bytes "model" as a value as well: parsed, and the key's value is used."""
        req = request({"metadata": {"user_id": "model"}, "model": "claude-haiku-4-5"})
        self.assertEqual(body_models(req, req.content), ["claude-haiku-4-5"])

    def test_rewound(self) -> None:
        req = request({"model": "x", "max_tokens": 3})
        body_models(req, req.content)
        self.assertEqual(json.loads(req.content.read())["max_tokens"], 3)


def _delta(hour: int, pusd: int) -> UsageDelta:
    return UsageDelta(id=TOKEN, label="t", created_at=hour - 10, expires_at=hour + 10**6,
                      last_used_at=hour, requests=1, model="claude-sonnet-4-5",
                      account="a", hour=hour, cost_pusd=pusd)


class SpendBookTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.clock.advance(START)
        self.book = SpendBook(None, self.clock)

    def test_windows_by_hour(self) -> None:
        """Each window sums the hours from the one its start falls in."""
        self.book.loaded([(TOKEN, int(START) - 6 * HOUR, 4 * 10**12),
                          (TOKEN, int(START) - 3 * HOUR, 2 * 10**12),
                          ("other", int(START), 10**12)])
        self.book.record(TOKEN, int(START), 10**12)
        self.assertEqual(self.book.spend(TOKEN, ["5h", "1d"]),
                         {"5h": Decimal(3), "1d": Decimal(7)})
        self.assertEqual(self.book.spend("nobody", ["30d"]), {"30d": Decimal(0)})

    def test_sums_kept_current(self) -> None:
        """
        The sums asked on every request are brought up to date by each recorded spend
        in their hour, made anew when the hour turns, and always what a fresh book with
        the same spend says.
        """
        hour = int(START) // HOUR * HOUR
        self.book.loaded([(TOKEN, hour - 6 * HOUR, 4 * 10**12)])
        windows = ["5h", "1d"]
        fresh_spend: list[tuple[str, int, int]] = [(TOKEN, hour - 6 * HOUR, 4 * 10**12)]
        for step in range(3):
            for pusd in (1, 10**12, 7):
                self.book.record(TOKEN, hour, pusd)
                fresh_spend.append((TOKEN, hour, pusd))
                fresh = SpendBook(None, self.clock)
                fresh.loaded([])
                for token, at, spent in fresh_spend:
                    fresh.record(token, at, spent)
                self.assertEqual(self.book.spend(TOKEN, windows), fresh.spend(TOKEN, windows))
            if step == 1:
                self.clock.advance(HOUR)  # the hour turns: 6 h ago leaves 1d's window later
                hour += HOUR
        self.assertEqual(self.book.spend(TOKEN, ["5h"]),
                         {"5h": Decimal(3 * 10**12 + 24) / 10**12})

    def test_local_spend_until_read_back(self) -> None:
        """
        Against a real SQLite store: spend recorded here counts until a poll that
        started after its write committed has read it back, so it is never missing
        (and counted twice at most between the commit and the next poll).
        """
        path = Path(self.mktemp()).resolve() / "linkrouter.sqlite3"
        path.parent.mkdir(parents=True)
        database = Database(f"sqlite:///{path}")
        prepare(database)
        connection = database.connect(5)
        self.addCleanup(connection.close)
        store = TokenStore(database.queries(), BlockingRunner(connection))
        self.book.store = store
        self.book.loaded([])
        hour = int(START)
        self.book.record(TOKEN, hour, 5)
        self.book.seal()  # a write takes the 5 ...
        self.book.record(TOKEN, hour, 7)  # ... and 7 more is recorded while it runs
        self.assertEqual(self._pusd(), 12)
        self.successResultOf(store.add_usage([_delta(hour, 5)], "batch-1", hour))
        self.clock.advance(0.5)
        self.successResultOf(Deferred.fromCoroutine(self.book.refresh()))
        self.assertEqual(self._pusd(), 17)  # committed, not yet known to be: counted twice
        self.book.written()
        self.clock.advance(0.5)
        self.successResultOf(Deferred.fromCoroutine(self.book.refresh()))
        self.assertEqual(self._pusd(), 12)  # 5 from the store, 7 still local
        self.book.seal()
        self.successResultOf(store.add_usage([_delta(hour, 7)], "batch-2", hour + 1))
        self.book.written()
        self.clock.advance(0.5)
        self.successResultOf(Deferred.fromCoroutine(self.book.refresh()))
        self.assertEqual(self._pusd(), 12)
        self.assertEqual(dict(self.book.tracked()), {TOKEN: {hour: 12}})

    def _pusd(self) -> int:
        return int(self.book.spend(TOKEN, ["5h"])["5h"] * 10**12)
