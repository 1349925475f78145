# -*- test-case-name: tests.integration.test_observability -*-
"""
Prometheus metrics, on a registry of the router's own (so two routers in one process,
as in the tests, do not share counters).

No label ever carries a token or a token id: accounts are named by their stable ids,
requests by dialect, route and status.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.registry import Collector

_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300,
                    600)


class _Accounts(Collector):
    """Each pool account's health, read when scraped."""

    def __init__(self, describe: Callable[[], dict[str, Any]]) -> None:
        self._describe = describe

    def collect(self) -> Iterator[GaugeMetricFamily]:
        healthy = GaugeMetricFamily(
            "linkrouter_account_healthy", "1 if the upstream account can serve now",
            labels=["account", "kind"])
        state = GaugeMetricFamily(
            "linkrouter_account_state",
            "The account's state (ok, cooling, needs_login): 1 for the current one",
            labels=["account", "state"])
        served = GaugeMetricFamily(
            "linkrouter_account_requests_served", "Requests served by the account",
            labels=["account"])
        for account in self._describe().get("accounts", []):
            healthy.add_metric([account["id"], account["kind"]], 1.0 if account["healthy"]
                               else 0.0)
            current = account["status"]  # ok, cooling or needs_login
            for name in ("ok", "cooling", "needs_login"):
                state.add_metric([account["id"], name], 1.0 if name == current else 0.0)
            served.add_metric([account["id"]], float(account["requests_served"]))
        yield healthy
        yield state
        yield served


def _nan_if_none(value: float | None) -> float:
    return float("nan") if value is None else value


class Metrics:
    """The router's metrics and their exposition."""

    def __init__(self, accounts: Callable[[], dict[str, Any]] | None = None,
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
        if accounts is not None:
            r.register(_Accounts(accounts))
        if revocations_age is not None:
            age = revocations_age
            Gauge("linkrouter_revocations_age_seconds",
                  "Seconds since the revocations known here were last read from the token "
                  "store (NaN before the first read)",
                  registry=r).set_function(lambda: _nan_if_none(age()))

    def exposition(self) -> tuple[bytes, str]:
        """The text exposition format, and its content type."""
        return generate_latest(self.registry), CONTENT_TYPE_LATEST
