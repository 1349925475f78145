"""
Tests for L{linkrouter.workermetrics}: every worker's metrics in one exposition, each
sample labelled with its worker, and the files through which workers share them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prometheus_client.parser import text_string_to_metric_families
from twisted.internet.defer import Deferred, succeed
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from linkrouter.metrics import Metrics
from linkrouter.workermetrics import SHARE_SECONDS, MetricsShare, labelled, merge


def inline(fn: Any, *args: Any) -> Deferred[Any]:
    return succeed(fn(*args))


class MergeTests(SynchronousTestCase):
    def test_labelled(self) -> None:
        """The worker label goes first, with or without other labels."""
        self.assertEqual(labelled('a_total{x="1 2"} 3.0', 1), 'a_total{worker="1",x="1 2"} 3.0')
        self.assertEqual(labelled("b 4.0", 0), 'b{worker="0"} 4.0')

    def test_merge(self) -> None:
        """Two workers' metrics: one header per metric, both workers' samples, parseable."""
        one, two = Metrics(), Metrics()
        one.requests.labels("messages", "messages", "200").inc(3)
        two.requests.labels("messages", "messages", "200").inc(5)
        two.refused("rpm")
        text = merge([(0, one.exposition()[0].decode()), (1, two.exposition()[0].decode())])
        self.assertEqual(text.count("# TYPE linkrouter_requests_total counter"), 1)
        samples = {(s.name, s.labels.get("worker"), s.labels.get("limit")): s.value
                   for family in text_string_to_metric_families(text)
                   for s in family.samples}
        self.assertEqual(samples[("linkrouter_requests_total", "0", None)], 3)
        self.assertEqual(samples[("linkrouter_requests_total", "1", None)], 5)
        self.assertEqual(samples[("linkrouter_policy_refusals_total", "0", "rpm")], 0)
        self.assertEqual(samples[("linkrouter_policy_refusals_total", "1", "rpm")], 1)


class ShareTests(SynchronousTestCase):
    def test_workers_see_each_other(self) -> None:
        """
        Each worker leaves its metrics every second; a scrape of either shows both, its
        own as they are now.
        """
        directory = Path(self.mktemp())
        directory.mkdir()
        clock = Clock()
        metrics = [Metrics(), Metrics()]
        shares = [MetricsShare(m, i, directory, clock, inline) for i, m in enumerate(metrics)]
        for share in shares:
            share.startService()
            self.addCleanup(share.stopService)
        metrics[1].requests.labels("none", "none", "200").inc(2)
        clock.advance(SHARE_SECONDS)
        clock.advance(SHARE_SECONDS)  # both wrote, both read
        metrics[0].requests.labels("none", "none", "200").inc(7)
        text = metrics[0].exposition()[0].decode()
        self.assertIn('linkrouter_requests_total{worker="0",dialect="none",route="none",'
                      'status="200"} 7.0', text)
        self.assertIn('linkrouter_requests_total{worker="1",dialect="none",route="none",'
                      'status="200"} 2.0', text)
        self.assertEqual(sorted(p.name for p in directory.iterdir()),
                         ["metrics-0.prom", "metrics-1.prom"])
