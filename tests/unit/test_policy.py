"""
Tests for L{linkrouter.policy}: admitting and refusing a token's requests under its
limits, on a L{Clock}'s time.
"""

from __future__ import annotations

from collections.abc import Mapping
from decimal import Decimal

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from linkrouter.limits import Limits, effective, parse_default_limits
from linkrouter.policy import MIN_SWEEP, RPM_WINDOW, Admission, Policy, Refusal

NO_SPEND: Mapping[str, Decimal] = {}


class PolicyTests(SynchronousTestCase):
    """L{Policy.admit} applies each limit, in order, and frees it again."""

    def setUp(self) -> None:
        self.clock = Clock()
        self.clock.advance(1_000_000)
        self.policy = Policy(self.clock)

    def admitted(
        self,
        limits: Limits | None,
        model: str | None = "claude-sonnet-4",
        spend: Mapping[str, Decimal] = NO_SPEND,
        who: str = "t1",
    ) -> Admission:
        result = self.policy.admit(who, limits, model, spend)
        self.assertIsInstance(result, Admission, getattr(result, "message", ""))
        assert isinstance(result, Admission)
        return result

    def refused(
        self,
        limits: Limits | None,
        model: str | None = "claude-sonnet-4",
        spend: Mapping[str, Decimal] = NO_SPEND,
        who: str = "t1",
    ) -> Refusal:
        result = self.policy.admit(who, limits, model, spend)
        self.assertIsInstance(result, Refusal)
        assert isinstance(result, Refusal)
        return result

    def test_no_limits(self) -> None:
        """A token without limits is always admitted and nothing is remembered."""
        for _ in range(1000):
            self.admitted(None)
        self.assertEqual(self.policy.tracked, 0)

    def test_model(self) -> None:
        """A model no pattern matches is a 403 naming the model and the patterns."""
        limits = Limits(models=("claude-haiku-*",))
        self.admitted(limits, model="claude-haiku-4-5")
        refusal = self.refused(limits, model="claude-opus-4-1")
        self.assertEqual((refusal.status, refusal.error_type), (403, "permission_error"))
        self.assertIsNone(refusal.retry_after)
        self.assertEqual(refusal.limit, "models")
        self.assertIn("'claude-opus-4-1'", refusal.message)
        self.assertIn("claude-haiku-*", refusal.message)
        self.assertEqual(refusal.error.status, 403)
        self.assertEqual(refusal.error.error_type, "permission_error")
        self.assertEqual(refusal.error.message, refusal.message)

    def test_no_model(self) -> None:
        """A request that names no model (GET /v1/models) is not refused by models."""
        self.admitted(Limits(models=("claude-haiku-*",)), model=None)

    def test_long_model_echo_is_cut(self) -> None:
        """A refusal echoes at most 100 characters of the client's model id."""
        refusal = self.refused(Limits(models=("a",)), model="x" * 5000)
        self.assertIn("x" * 100, refusal.message)
        self.assertNotIn("x" * 101, refusal.message)

    def test_concurrency(self) -> None:
        """
        The third request at concurrency 2 is a 429 naming the limit, its value and the
        count; after a release (twice is once) one more is admitted.
        """
        limits = Limits(concurrency=2)
        first, second = self.admitted(limits), self.admitted(limits)
        refusal = self.refused(limits)
        self.assertEqual((refusal.status, refusal.error_type), (429, "rate_limit_error"))
        self.assertEqual(refusal.limit, "concurrency")
        self.assertEqual(refusal.retry_after, 1)
        self.assertIn("concurrency limit of 2", refusal.message)
        self.assertIn("2 of its requests are in flight", refusal.message)
        first.release()
        first.release()
        third = self.admitted(limits)
        self.refused(limits)
        second.release()
        third.release()
        self.admitted(limits)
        self.admitted(limits)
        self.refused(limits)

    def test_concurrency_per_token(self) -> None:
        """One token's requests in flight do not count against another's."""
        limits = Limits(concurrency=1)
        self.admitted(limits, who="a")
        self.refused(limits, who="a")
        self.admitted(limits, who="b")

    def test_rpm(self) -> None:
        """
        With rpm 3, the fourth request within 60 s is refused until the oldest admit is
        60 s old; retry_after is exactly (rounded up) that wait.
        """
        limits = Limits(rpm=3)
        self.admitted(limits)
        self.clock.advance(10.5)
        self.admitted(limits)
        self.clock.advance(20)
        self.admitted(limits)
        refusal = self.refused(limits)
        self.assertEqual((refusal.status, refusal.error_type), (429, "rate_limit_error"))
        self.assertEqual(refusal.limit, "rpm")
        self.assertEqual(refusal.retry_after, 30)  # 60 - 30.5, rounded up
        self.assertIn("rpm limit of 3", refusal.message)
        self.assertIn("3 were admitted in the last 60 s", refusal.message)
        self.assertIn("frees up in 30 s", refusal.message)
        self.clock.advance(29)
        self.assertEqual(self.refused(limits).retry_after, 1)  # 0.5 s left: at least 1
        self.clock.advance(0.5)
        self.admitted(limits)
        self.assertEqual(self.refused(limits).retry_after, 11)  # the second: 10.5 s on

    def test_refused_not_counted(self) -> None:
        """Refused requests do not count towards rpm."""
        limits = Limits(rpm=1)
        self.admitted(limits)
        for _ in range(10):
            self.refused(limits)
        self.clock.advance(RPM_WINDOW)
        self.admitted(limits)

    def test_rpm_lowered(self) -> None:
        """When a token's rpm is lowered, the admits already counted still count."""
        self.admitted(Limits(rpm=10))
        self.clock.advance(5)
        self.admitted(Limits(rpm=10))
        self.clock.advance(5)
        self.admitted(Limits(rpm=10))
        refusal = self.refused(Limits(rpm=2))
        self.assertEqual(refusal.retry_after, 55)  # until the second of the three leaves

    def test_budget(self) -> None:
        """
        Spend at or over a window's budget is a 429 naming the window, budget and spend,
        retry_after the window length; spend below every budget is admitted.
        """
        limits = Limits(budget_usd={"1d": Decimal(25), "7d": Decimal(100)})
        self.admitted(limits, spend={"1d": Decimal("24.99"), "7d": Decimal(50)})
        refusal = self.refused(limits, spend={"1d": Decimal("25.00"), "7d": Decimal(50)})
        self.assertEqual((refusal.status, refusal.error_type), (429, "rate_limit_error"))
        self.assertEqual(refusal.limit, "budget_usd.1d")
        self.assertEqual(refusal.retry_after, 86400)
        self.assertIn("budget_usd.1d of $25.00", refusal.message)
        self.assertIn("$25.00 was spent in the trailing 1d", refusal.message)
        # Both exceeded: the longer window decides when the token may spend again.
        both = self.refused(limits, spend={"1d": Decimal(30), "7d": Decimal("100.123456")})
        self.assertEqual(both.limit, "budget_usd.7d")
        self.assertEqual(both.retry_after, 7 * 86400)
        self.assertIn("$100.1235 was spent", both.message)
        # The ledger's spend falls as it ages out: admitted again.
        self.admitted(limits, spend={"1d": Decimal(3), "7d": Decimal(99)})
        # A window the ledger reports nothing for has no spend.
        self.admitted(limits, spend={})

    def test_order(self) -> None:
        """Model is checked first, then concurrency, then rpm, then budget."""
        limits = Limits(rpm=1, concurrency=1, budget_usd={"5h": Decimal(1)}, models=("claude-*",))
        over = {"5h": Decimal(2)}
        self.assertEqual(self.refused(limits, model="gpt-4", spend=over).limit, "models")
        self.assertEqual(self.refused(limits, spend=over).limit, "budget_usd.5h")
        first = self.admitted(limits)
        self.assertEqual(self.refused(limits, model="gpt-4", spend=over).limit, "models")
        self.assertEqual(self.refused(limits, spend=over).limit, "concurrency")
        first.release()
        self.assertEqual(self.refused(limits, spend=over).limit, "rpm")
        self.clock.advance(RPM_WINDOW)
        self.assertEqual(self.refused(limits, spend=over).limit, "budget_usd.5h")
        self.admitted(limits)

    def test_default_limits(self) -> None:
        """A token without limits of its own is held to --default-limits."""
        default = parse_default_limits('{"rpm": 1}')
        own = Limits(rpm=2)
        self.admitted(effective(None, default), who="plain")
        self.refused(effective(None, default), who="plain")
        self.admitted(effective(own, default), who="own")
        self.admitted(effective(own, default), who="own")
        self.refused(effective(own, default), who="own")

    def test_memory_bounded(self) -> None:
        """
        Many tokens, each idle after one request, are forgotten: the table never grows
        far past the tokens active in the last 60 s.
        """
        limits = Limits(rpm=5, concurrency=5)
        for i in range(20 * MIN_SWEEP):
            self.admitted(limits, who=f"t{i}").release()
            self.clock.advance(0.1)  # 600 tokens active in any 60 s
            self.assertLessEqual(self.policy.tracked, 2 * MIN_SWEEP)
        self.clock.advance(RPM_WINDOW)
        for i in range(MIN_SWEEP):
            self.admitted(limits, who=f"u{i}").release()
        self.assertLessEqual(self.policy.tracked, MIN_SWEEP + 1)

    def test_in_flight_not_forgotten(self) -> None:
        """A token with a request in flight is kept through a sweep: its slot still counts."""
        limits = Limits(concurrency=1)
        held = self.admitted(limits, who="held")
        self.clock.advance(10 * RPM_WINDOW)
        for i in range(3 * MIN_SWEEP):
            self.admitted(limits, who=f"t{i}").release()
        self.clock.advance(RPM_WINDOW)
        for i in range(3 * MIN_SWEEP):
            self.admitted(limits, who=f"u{i}").release()
        self.refused(limits, who="held")
        held.release()
        self.admitted(limits, who="held")

    def test_uncounted_limits_remember_nothing(self) -> None:
        """Limits with only models and budgets leave nothing in memory."""
        limits = Limits(budget_usd={"1d": Decimal(1)}, models=("claude-*",))
        for i in range(100):
            self.admitted(limits, who=f"t{i}").release()
        self.assertEqual(self.policy.tracked, 0)
