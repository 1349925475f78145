"""Usage, cost and policy-refusal metrics, read back from the router's registry."""

from __future__ import annotations

from decimal import Decimal

from twisted.internet.testing import MemoryReactorClock
from twisted.trial.unittest import SynchronousTestCase

from linkrouter.accounts import Account, AccountPool
from linkrouter.credentials import Credential
from linkrouter.metrics import MAX_MODEL_LABELS, POLICY_LIMITS, Metrics, ModelLabels
from linkrouter.pricing import PriceTable
from linkrouter.tokenusage import Usage

from .test_accountstate import window_headers
from .test_oauth import NOW, random_secret

USAGE = Usage(input_tokens=3, output_tokens=77, cache_read_tokens=42000,
              cache_write_5m_tokens=500, cache_write_1h_tokens=1000)


class ModelLabelsTests(SynchronousTestCase):
    """Model label values stay few and never carry anything but a plausible model id."""

    def test_plausible_ids_kept(self) -> None:
        """Model ids as the API spells them are their own label."""
        labels = ModelLabels()
        for model in ("claude-opus-5-5", "claude-sonnet-4-5-20250929", "claude-3.5-x", "m"):
            self.assertEqual(labels(model), model)

    def test_implausible_ids_other(self) -> None:
        """Upper case, spaces, slashes, colons, other characters or a long id are "other"."""
        labels = ModelLabels()
        for model in ("Claude-Opus", "claude opus", "a/b", "us.anthropic.claude-v1:0",
                      "la_sk_eyJhbGciOi", "-leading-dash", "c" * 65, "claude\n", "ç"):
            self.assertEqual(labels(model), "other", model)
        self.assertEqual(labels("c" * 64), "c" * 64)

    def test_unknown(self) -> None:
        """No model (empty or None) is "unknown"."""
        labels = ModelLabels()
        self.assertEqual((labels(""), labels(None)), ("unknown", "unknown"))

    def test_bounded(self) -> None:
        """Past MAX_MODEL_LABELS distinct ids a new one is "other"; the first ones stay."""
        labels = ModelLabels()
        first = [f"model-{i}" for i in range(MAX_MODEL_LABELS)]
        self.assertEqual([labels(m) for m in first], first)
        self.assertEqual(labels("model-new"), "other")
        self.assertEqual(labels("model-0"), "model-0")
        self.assertEqual(labels(first[-1]), first[-1])


class CountedTests(SynchronousTestCase):
    """L{Metrics.counted} adds one answer's tokens and cost under its model's label."""

    def setUp(self) -> None:
        self.metrics = Metrics()

    def sample(self, name: str, **labels: str) -> float | None:
        return self.metrics.registry.get_sample_value(name, labels)

    def test_tokens_by_kind(self) -> None:
        """Each kind of token is its own series; answers add up."""
        self.metrics.counted("claude-opus-5-5", USAGE, 0, True)
        self.metrics.counted("claude-opus-5-5", Usage(input_tokens=7), 0, True)
        expected = {"input": 10, "output": 77, "cache_read": 42000, "cache_write_5m": 500,
                    "cache_write_1h": 1000}
        for kind, tokens in expected.items():
            self.assertEqual(self.sample("linkrouter_usage_tokens_total",
                                         model="claude-opus-5-5", kind=kind), tokens, kind)

    def test_cost(self) -> None:
        """Cost in picodollars is exposed in USD, per model, as the price table gives it."""
        prices = PriceTable.shipped()
        cost = prices.cost("claude-opus-4-1", USAGE)
        self.assertEqual(cost, Decimal("0.108195"))
        self.metrics.counted("claude-opus-4-1", USAGE, int(cost * 10**12), True)
        self.metrics.counted("claude-opus-4-1", USAGE, int(cost * 10**12), True)
        self.assertAlmostEqual(
            self.sample("linkrouter_usage_cost_usd_total", model="claude-opus-4-1"),
            0.216390, places=9)
        self.assertEqual(self.sample("linkrouter_unpriced_models_total"), 0)

    def test_unpriced(self) -> None:
        """An answer whose model no row matched counts as unpriced, whatever its model."""
        self.metrics.counted("claude-opus-9", USAGE, 1, False)
        self.metrics.counted("claude-opus-9", USAGE, 1, False)
        self.metrics.counted("claude-haiku-4-5", USAGE, 1, True)
        self.assertEqual(self.sample("linkrouter_unpriced_models_total"), 2)

    def test_bounded_model_label(self) -> None:
        """An implausible model (a token, say) is counted under "other", never as itself."""
        secret = "la_sk_eyJ0eXAiOiJKV1QiLCJhbGciOiJIUzI1NiJ9"
        self.metrics.counted(secret, USAGE, 5, True)
        self.metrics.counted("", Usage(output_tokens=1), 0, False)
        self.assertEqual(self.sample("linkrouter_usage_tokens_total", model="other",
                                     kind="output"), 77)
        self.assertEqual(self.sample("linkrouter_usage_tokens_total", model="unknown",
                                     kind="output"), 1)
        text, _ = self.metrics.exposition()
        self.assertNotIn(secret.encode(), text)
        self.assertNotIn(b"la_sk_", text)

    def test_nothing_used(self) -> None:
        """An answer with no usage and no cost makes no token or cost series."""
        self.metrics.counted("claude-opus-5-5", Usage(), 0, True)
        text, _ = self.metrics.exposition()
        self.assertNotIn(b"claude-opus-5-5", text)

    def test_separate_registries(self) -> None:
        """Two routers in one process count apart (labels seen included)."""
        other = Metrics()
        self.metrics.counted("claude-opus-5-5", USAGE, 0, True)
        self.assertIsNone(other.registry.get_sample_value(
            "linkrouter_usage_tokens_total", {"model": "claude-opus-5-5", "kind": "input"}))


class RefusedTests(SynchronousTestCase):
    """L{Metrics.refused} counts policy refusals by the limit that refused."""

    def test_by_limit(self) -> None:
        """Every limit is a series from the start (0) and counts its refusals."""
        metrics = Metrics()
        for limit in POLICY_LIMITS:
            self.assertEqual(metrics.registry.get_sample_value(
                "linkrouter_policy_refusals_total", {"limit": limit}), 0, limit)
        metrics.refused("rpm")
        metrics.refused("rpm")
        metrics.refused("budget_usd.1d")
        sample = metrics.registry.get_sample_value
        self.assertEqual(sample("linkrouter_policy_refusals_total", {"limit": "rpm"}), 2)
        self.assertEqual(sample("linkrouter_policy_refusals_total",
                                {"limit": "budget_usd.1d"}), 1)

    def test_unknown_limit_other(self) -> None:
        """A limit name outside the known set is counted as "other", not as itself."""
        metrics = Metrics()
        metrics.refused("budget_usd.2d")
        self.assertEqual(metrics.registry.get_sample_value(
            "linkrouter_policy_refusals_total", {"limit": "other"}), 1)
        self.assertNotIn(b"budget_usd.2d", metrics.exposition()[0])


class AccountMetricsTests(SynchronousTestCase):
    """Each account's status, requests and windows, by account id, when scraped."""

    def test_exposition(self) -> None:
        """
        A paused account that served twice: its state, requests, window percent and
        reset, last use and resume time are exported under its id; no token, no name.
        """
        clock = MemoryReactorClock()
        clock.advance(NOW)
        secret = random_secret("oat01")
        account = Account.for_static(Credential("oauth", secret, "--oauth-token"), clock,
                                     name="team-main")
        pool = AccountPool([account], clock, pause_at_percent=90)
        pool.served(account, None)
        pool.served(account, None)
        pool.observe(account, window_headers(w5h=(0.95, NOW + 600), w7d=(0.4, NOW + 9000)))
        metrics = Metrics(lambda: pool.accounts)

        def sample(name: str, **labels: str) -> float | None:
            return metrics.registry.get_sample_value(name, {"account": account.id, **labels})

        self.assertEqual(sample("linkrouter_account_state", state="paused"), 1.0)
        self.assertEqual(sample("linkrouter_account_state", state="ok"), 0.0)
        self.assertEqual(sample("linkrouter_account_healthy", kind="setup-token"), 0.0)
        self.assertEqual(sample("linkrouter_account_requests_served"), 2.0)
        self.assertEqual(sample("linkrouter_account_utilization_percent", window="5h"), 95.0)
        self.assertEqual(sample("linkrouter_account_utilization_percent", window="7d"), 40.0)
        self.assertEqual(sample("linkrouter_account_utilization_resets_at_seconds",
                                window="7d"), NOW + 9000)
        self.assertEqual(sample("linkrouter_account_last_used_at_seconds"), NOW)
        self.assertEqual(sample("linkrouter_account_resumes_at_seconds"), NOW + 600)
        text = metrics.exposition()[0].decode()
        self.assertNotIn(secret, text)
        self.assertNotIn(account.name, text)
