# -*- test-case-name: tests.unit.test_metrics,tests.integration.test_observability -*-
"""
Prometheus metrics, on a registry of the router's own (so two routers in one process,
as in the tests, do not share counters).

No label ever carries a token, a token id or a token's label: accounts are named by their
stable ids, requests by dialect, route and status, usage by model (L{ModelLabels} keeps
that label's values few) and kind, policy refusals by the limit that refused.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.registry import Collector

from linkrouter.account import Account
from linkrouter.accountstate import STATUSES
from linkrouter.tokenusage import Usage

_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300,
                    600)


class _Accounts(Collector):
    """
    Each pool account's health, requests and rate-limit windows, read when scraped; by
    account id (never a token, never a name an operator may have typed a secret into).
    """

    def __init__(self, accounts: Callable[[], Iterable[Account]]) -> None:
        self._accounts = accounts

    def collect(self) -> Iterator[GaugeMetricFamily]:
        healthy = GaugeMetricFamily(
            "linkrouter_account_healthy", "1 if the upstream account can serve now",
            labels=["account", "kind"])
        state = GaugeMetricFamily(
            "linkrouter_account_state", "The account's status (" + ", ".join(STATUSES)
            + "): 1 for the current one", labels=["account", "state"])
        served = GaugeMetricFamily(
            "linkrouter_account_requests_served", "Requests served by the account",
            labels=["account"])
        used = GaugeMetricFamily(
            "linkrouter_account_utilization_percent", "Share of the account's rate-limit "
            "window used (0-100), as the upstream last reported it", labels=["account",
                                                                             "window"])
        resets = GaugeMetricFamily(
            "linkrouter_account_utilization_resets_at_seconds", "When the account's "
            "rate-limit window resets (Unix time), as the upstream last reported it",
            labels=["account", "window"])
        last_used = GaugeMetricFamily(
            "linkrouter_account_last_used_at_seconds", "When the account last served a "
            "request (Unix time)", labels=["account"])
        resumes = GaugeMetricFamily(
            "linkrouter_account_resumes_at_seconds", "When a cooling or paused account "
            "serves again (Unix time)", labels=["account"])
        for account in self._accounts():
            now = account.clock.seconds()
            current = account.status(now)
            healthy.add_metric([account.id, account.kind], 1.0 if current == "ok" else 0.0)
            for name in STATUSES:
                state.add_metric([account.id, name], 1.0 if name == current else 0.0)
            served.add_metric([account.id], float(account.requests))
            for window, figure in account.windows.items():
                used.add_metric([account.id, window], figure.percent)
                if figure.resets_at is not None:
                    resets.add_metric([account.id, window], figure.resets_at)
            if account.last_used_at is not None:
                last_used.add_metric([account.id], account.last_used_at)
            if (when := account.resumes_at(now)) is not None:
                resumes.add_metric([account.id], when)
        yield from (healthy, state, served, used, resets, last_used, resumes)


#: Most distinct models a router names in its usage labels; the rest are "other".
MAX_MODEL_LABELS = 64
#: What a model id must look like to be a label value: short, lower case, digits, dots, dashes.
_PLAUSIBLE_MODEL = re.compile(r"[a-z0-9][a-z0-9.-]{0,63}")
#: The C{limit} label values of policy refusals (DESIGN §9); anything else is "other".
POLICY_LIMITS = ("models", "concurrency", "rpm", "budget_usd.5h", "budget_usd.1d",
                 "budget_usd.7d", "budget_usd.30d")
#: The C{kind} label values of usage tokens, and the L{Usage} field each counts.
TOKEN_KINDS = (("input", "input_tokens"), ("output", "output_tokens"),
               ("cache_read", "cache_read_tokens"), ("cache_write_5m", "cache_write_5m_tokens"),
               ("cache_write_1h", "cache_write_1h_tokens"))
_PUSD_PER_USD = 10**12


class ModelLabels:
    """
    The C{model} label value for a model id, so the label's values stay few whatever the
    upstream answers: the id itself when it looks like one (at most 64 characters of
    C{[a-z0-9.-]}) and it is among the first L{MAX_MODEL_LABELS} such ids seen, else
    C{"other"}; an unknown model (C{""} or C{None}) is C{"unknown"}.
    """

    def __init__(self, limit: int = MAX_MODEL_LABELS) -> None:
        self._limit = limit
        self._seen: set[str] = set()

    def __call__(self, model: str | None) -> str:
        if not model:
            return "unknown"
        if model in self._seen:
            return model
        if len(self._seen) < self._limit and _PLAUSIBLE_MODEL.fullmatch(model):
            self._seen.add(model)
            return model
        return "other"


class Children:
    """
    A labelled metric's children by their label values, each looked up once: the client
    library's C{labels} checks and converts its values and takes a lock on every call,
    and the request path names the same few children over and over. The values are as
    few as the metric's own children (the labels are bounded by design).
    """

    __slots__ = ("_kept", "_metric")

    def __init__(self, metric: Any) -> None:
        self._metric = metric
        self._kept: dict[tuple[str, ...], Any] = {}

    def __call__(self, *values: str) -> Any:
        child = self._kept.get(values)
        if child is None:
            child = self._kept[values] = self._metric.labels(*values)
        return child


def _nan_if_none(value: float | None) -> float:
    return float("nan") if value is None else value


class Metrics:
    """The router's metrics and their exposition."""

    def __init__(self, accounts: Callable[[], Iterable[Account]] | None = None,
                 revocations_age: Callable[[], float | None] | None = None) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "linkrouter_requests", "Requests answered, by dialect, route and status",
            ["dialect", "route", "status"], registry=r)
        self.upstream_latency = Histogram(
            "linkrouter_upstream_latency_seconds",
            "Seconds from sending a request upstream to its response headers",
            ["dialect"], buckets=_LATENCY_BUCKETS, registry=r)
        self.first_byte = Histogram(
            "linkrouter_time_to_first_byte_seconds",
            "Seconds from a request's arrival to the first body byte sent back",
            ["dialect"], buckets=_LATENCY_BUCKETS, registry=r)
        self.inflight = Gauge(
            "linkrouter_inflight_requests", "Proxied requests being answered now "
            "(streams included)", registry=r)
        self.rejections = Counter(
            "linkrouter_token_rejections", "Router tokens refused, by reason", ["reason"],
            registry=r)
        self.bytes = Counter(
            "linkrouter_body_bytes", "Body bytes relayed: up (to the upstream) and down "
            "(to clients)", ["direction"], registry=r)
        self.refreshes = Counter(
            "linkrouter_credential_refreshes", "OAuth refreshes of upstream accounts, by "
            "outcome (ok, transient, terminal, rotated_elsewhere)", ["outcome"], registry=r)
        self.model_label = ModelLabels()
        self.usage_tokens = Counter(
            "linkrouter_usage_tokens", "Tokens the upstream reported used, by model and kind "
            "(input, output, cache_read, cache_write_5m, cache_write_1h)", ["model", "kind"],
            registry=r)
        self.usage_cost = Counter(
            "linkrouter_usage_cost_usd", "API-equivalent cost of the usage in USD, by model",
            ["model"], registry=r)
        self.unpriced = Counter(
            "linkrouter_unpriced_models", "Answers whose model no price row matched (priced "
            "by family or the most expensive row)", registry=r)
        self.policy_refusals = Counter(
            "linkrouter_policy_refusals", "Requests a token's limits refused, by limit "
            "(models, concurrency, rpm, budget_usd.WINDOW)", ["limit"], registry=r)
        for limit in POLICY_LIMITS:
            self.policy_refusals.labels(limit)
        # The children the request path counts in, found once (L{Children}).
        self._answers = Children(self.requests)
        self.upstream_latency_of = Children(self.upstream_latency)
        self.first_byte_of = Children(self.first_byte)
        self.bytes_up = self.bytes.labels("up")
        self.bytes_down = self.bytes.labels("down")
        self._tokens_of = Children(self.usage_tokens)
        self._cost_of = Children(self.usage_cost)
        if accounts is not None:
            r.register(_Accounts(accounts))
        if revocations_age is not None:
            age = revocations_age
            Gauge("linkrouter_revocations_age_seconds",
                  "Seconds since the revocations known here were last read from the token "
                  "store (NaN before the first read)",
                  registry=r).set_function(lambda: _nan_if_none(age()))

    def counted(self, model: str | None, usage: Usage, cost_pusd: int, priced: bool) -> None:
        """
        One answer's usage: its tokens by kind and its cost (picodollars, as recorded) under
        the model's label; C{priced} false (no price row matched the model) counts it as
        unpriced.
        """
        label = self.model_label(model)
        for kind, name in TOKEN_KINDS:
            tokens = getattr(usage, name)
            if tokens:
                self._tokens_of(label, kind).inc(tokens)
        if cost_pusd > 0:
            self._cost_of(label).inc(cost_pusd / _PUSD_PER_USD)
        if not priced:
            self.unpriced.inc()

    def answered(self, dialect: str, route: str, status: object) -> None:
        """A request was answered (C{status}: its code, or why it has none)."""
        self._answers(dialect, route, str(status)).inc()

    def refused(self, limit: str) -> None:
        """A token's C{limit} (one of L{POLICY_LIMITS}) refused a request."""
        self.policy_refusals.labels(limit if limit in POLICY_LIMITS else "other").inc()

    #: Turns this process's exposition into the one served (with C{--workers}: every
    #: worker's, L{linkrouter.workermetrics}); C{None} serves it as it is.
    served: Callable[[bytes], bytes] | None = None

    def exposition(self) -> tuple[bytes, str]:
        """The text exposition format, and its content type."""
        text = generate_latest(self.registry)
        return (text if self.served is None else self.served(text)), CONTENT_TYPE_LATEST
