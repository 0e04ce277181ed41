"""Prometheus metrics: one read-only collector over the evaluator's state, served by every runtime.

Nothing in the fold counts anything for Prometheus; this collector reads the views of the state and the
runtime's tallies at scrape time. Labels are bounded by the catalog (action types, tiers, metrics): input
that names no catalog type (malformed, an unknown type) is counted without an action_type label, in
`tiergate_unattributed_events_total`, never as an `action_type=""` series; input the schema rejects that
names a catalog type counts under that type, `result="rejected"`.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterator

from prometheus_client import GC_COLLECTOR, PLATFORM_COLLECTOR, PROCESS_COLLECTOR, CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, InfoMetricFamily, Metric
from prometheus_client.registry import Collector

from tiergate.models.state import State
from tiergate.models.views import key_view
from tiergate.models.wire import TIERS

from . import __version__
from .pipeline import Tallies


def registry_with(*collectors: Collector) -> CollectorRegistry:
    """A registry for one runtime's /metrics: its own collectors plus the standard process (CPU, memory,
    open files, start time), Python platform and garbage-collector metrics of prometheus_client."""
    registry = CollectorRegistry()
    for collector in (PROCESS_COLLECTOR, PLATFORM_COLLECTOR, GC_COLLECTOR, *collectors):
        registry.register(collector)
    return registry


class TiergateCollector(Collector):
    """Exposes tiers, bars, hold progress and event/decision counts from `state()` at each scrape."""

    def __init__(
        self,
        identity: Callable[[], tuple[str, str]],
        state: Callable[[], State],
        tallies: Callable[[], Tallies],
        clock: Callable[[], int],
        stale_after: int = 6 * 3600,
    ) -> None:
        self.identity, self.state, self.tallies, self.clock = identity, state, tallies, clock
        self.stale_after = stale_after

    def collect(self) -> Iterator[Metric]:
        version, sha = self.identity()
        info = InfoMetricFamily("tiergate_build", "tiergate version and the policy it runs (the latest activation)")
        info.add_metric([], {"version": __version__, "policy_version": version, "policy_sha256": sha})
        yield info
        yield from self._per_type()
        tallies = self.tallies()
        yield from self._events(tallies)
        decisions = CounterMetricFamily(
            "tiergate_decisions", "Decisions by action type and kind", labels=["action_type", "kind"]
        )
        violations = CounterMetricFamily(
            "tiergate_tier_violations", "Actions that ran above the tier map", labels=["action_type"]
        )
        for (action_type, kind), n in sorted(tallies.decisions.items()):
            decisions.add_metric([action_type, kind], n)
            if kind == "violation":
                violations.add_metric([action_type], n)
        yield decisions
        yield violations

    def _events(self, tallies: Tallies) -> Iterator[Metric]:
        events = CounterMetricFamily(
            "tiergate_events", "Events by action type and result", labels=["action_type", "result"]
        )
        unattributed = CounterMetricFamily(
            "tiergate_unattributed_events",
            "Input that names no action type of the catalog (malformed, unknown type), by result",
            labels=["result"],
        )
        stray = Counter({"rejected": 0})
        for (action_type, result), n in sorted(tallies.events.items()):
            if action_type:
                events.add_metric([action_type, result], n)
            else:
                stray[result] += n
        for result, n in sorted(stray.items()):
            unattributed.add_metric([result], n)
        yield events
        yield unattributed

    def _per_type(self) -> Iterator[Metric]:
        tier = GaugeMetricFamily("tiergate_tier", "1 for the tier an action type holds", labels=["action_type", "tier"])
        level = GaugeMetricFamily(
            "tiergate_tier_level", "The tier as a number: 0 crawl, 1 walk, 2 run", labels=["action_type"]
        )
        since = GaugeMetricFamily(
            "tiergate_tier_since_seconds", "Event time the current tier began (Unix seconds)", labels=["action_type"]
        )
        labels = ["action_type", "rule", "metric"]
        rate = GaugeMetricFamily("tiergate_bar_rate", "Success ratio of a bar's evidence", labels=labels)
        samples = GaugeMetricFamily("tiergate_bar_samples", "Outcomes in a bar's evidence", labels=labels)
        lower = GaugeMetricFamily("tiergate_bar_wilson_lower", "Wilson lower bound of a bar's rate", labels=labels)
        upper = GaugeMetricFamily("tiergate_bar_wilson_upper", "Wilson upper bound of a bar's rate", labels=labels)
        target = GaugeMetricFamily("tiergate_bar_target", "A bar's target", labels=labels)
        threshold = GaugeMetricFamily(
            "tiergate_keep_threshold",
            "A keep bar's demotion line under the v1 rule (point): target − margin",
            labels=["action_type", "metric"],
        )
        statistic = GaugeMetricFamily(
            "tiergate_bar_statistic",
            "A sequential rule's statistic since its test began (keep: the SPRT; promote: the log e-value)",
            labels=labels,
        )
        statistic_threshold = GaugeMetricFamily(
            "tiergate_bar_statistic_threshold",
            "The statistic's threshold (keep: demote at or above it; promote: passes from it)",
            labels=labels,
        )
        hold = GaugeMetricFamily(
            "tiergate_hold_progress_ratio", "Share of the promote hold held so far", labels=["action_type"]
        )
        watermark = GaugeMetricFamily(
            "tiergate_watermark_seconds", "Event-time watermark (Unix seconds)", labels=["action_type"]
        )
        lag = GaugeMetricFamily(
            "tiergate_watermark_lag_seconds", "Runtime clock minus the watermark", labels=["action_type"]
        )
        in_tier = GaugeMetricFamily(
            "tiergate_time_in_tier_seconds", "Runtime clock minus when the current tier began", labels=["action_type"]
        )
        closed = GaugeMetricFamily(
            "tiergate_last_close_seconds", "End of the last closed window (Unix seconds)", labels=["action_type"]
        )
        stale = GaugeMetricFamily(
            "tiergate_evidence_stale",
            f"1 when no window has closed for {self.stale_after}s of runtime clock: the bars are not being judged",
            labels=["action_type"],
        )
        customer_pending = GaugeMetricFamily(
            "tiergate_customer_pending",
            "Customer units (actions) waiting for their maturity and the feed's checkpoint",
            labels=["action_type", "tier"],
        )
        checkpoint_lag = GaugeMetricFamily(
            "tiergate_customer_checkpoint_lag_seconds",
            "Runtime clock minus the customer feed's checkpoint (how far behind the feed says it is complete)",
            labels=["action_type"],
        )
        maturity = GaugeMetricFamily(
            "tiergate_customer_maturity_seconds", "The customer outcome maturity in force", labels=["action_type"]
        )
        halted = GaugeMetricFamily(
            "tiergate_key_halted",
            "1 when the fold stopped an action type (an activation whose rules this tiergate cannot read)",
            labels=["action_type"],
        )
        now = self.clock()
        for key in sorted(self.state().keys.values(), key=lambda k: k.action_type):
            if key.retired:
                continue  # out of the tier map
            halted.add_metric([key.action_type], float(key.halted is not None))
            view = key_view(key)
            if view.maturity is not None:
                maturity.add_metric([view.action_type], view.maturity)
                for tier_name in TIERS:
                    customer_pending.add_metric([view.action_type, tier_name], (view.pending or {}).get(tier_name, 0))
                if view.checkpoint is not None:
                    checkpoint_lag.add_metric([view.action_type], now - view.checkpoint)
            name = view.action_type
            for t in TIERS:
                tier.add_metric([name, t], float(t == view.tier))
            level.add_metric([name], TIERS.index(view.tier))
            if view.since is not None:
                since.add_metric([name], view.since)
            for rule, bars in (("promote", view.promote), ("keep", view.keep)):
                for e in bars:
                    bar_labels = [name, rule, e.bar.metric]
                    if e.rate is not None:
                        rate.add_metric(bar_labels, e.rate)
                    samples.add_metric(bar_labels, e.n)
                    lower.add_metric(bar_labels, e.lower)
                    upper.add_metric(bar_labels, e.upper)
                    target.add_metric(bar_labels, e.bar.target)
                    if e.test is not None:
                        statistic.add_metric(bar_labels, e.test.statistic)
                        statistic_threshold.add_metric(bar_labels, e.test.threshold)
                    elif rule == "keep":
                        threshold.add_metric([name, e.bar.metric], float(e.bar.keep_below))
            if view.hold_required is not None:
                hold.add_metric([name], view.hold_progress)
            if view.watermark is not None:
                watermark.add_metric([name], view.watermark)
                lag.add_metric([name], now - view.watermark)
            if view.since is not None:
                in_tier.add_metric([name], now - view.since)
            if view.last_close is not None:
                closed.add_metric([name], view.last_close)
                stale.add_metric([name], float(now - view.last_close > self.stale_after))
        yield from (tier, level, since, rate, samples, lower, upper, target, threshold, statistic, statistic_threshold)
        yield from (hold, watermark, lag)
        yield from (in_tier, closed, stale, halted, customer_pending, checkpoint_lag, maturity)


class WorkerCollector(Collector):
    """The Kafka worker's own internals: consumer lag per input partition, rebalances, batches, input offsets
    stepped over (transaction markers), failures that sent partitions back to their last snapshot, the
    share of recent input that was late, ingress records forwarded and refused, and how long due ticks have
    waited for the forwarding."""

    def __init__(
        self,
        lag: Callable[[], dict[int, int]],
        rebalances: Callable[[], int],
        batches: Callable[[], int],
        gaps: Callable[[], int] | None = None,
        late_share: Callable[[], float] | None = None,
        failures: Callable[[], int] | None = None,
        forwarded: Callable[[], tuple[int, int]] | None = None,
        ticks_held: Callable[[], float] | None = None,
    ) -> None:
        self.lag, self.rebalances, self.batches = lag, rebalances, batches
        self.gaps, self.late_share, self.failures, self.forwarded = gaps, late_share, failures, forwarded
        self.ticks_held = ticks_held

    def collect(self) -> Iterator[Metric]:
        lag = GaugeMetricFamily(
            "tiergate_consumer_lag_messages", "Input messages behind the partition end", labels=["partition"]
        )
        for partition, behind in sorted(self.lag().items()):
            lag.add_metric([str(partition)], behind)
        yield lag
        yield CounterMetricFamily(
            "tiergate_worker_rebalances", "Partition assignments this worker received", value=self.rebalances()
        )
        yield CounterMetricFamily("tiergate_worker_batches", "Batches folded", value=self.batches())
        if self.gaps is not None:
            yield CounterMetricFamily(
                "tiergate_worker_input_gaps",
                "Input offsets stepped over: they hold no record (transaction markers, aborted transactions)",
                value=self.gaps(),
            )
        if self.failures is not None:
            yield CounterMetricFamily(
                "tiergate_worker_fold_failures",
                "Times folding or delivering failed and partitions went back to their last snapshot",
                value=self.failures(),
            )
        if self.forwarded is not None:
            forwarded, refused = self.forwarded()
            yield CounterMetricFamily(
                "tiergate_worker_forwarded", "Ingress records forwarded into the events topic", value=forwarded
            )
            yield CounterMetricFamily(
                "tiergate_worker_forward_refused",
                "Ingress records of a type their topic does not take, set aside in the rejected-input topic",
                value=refused,
            )
        if self.ticks_held is not None:
            yield GaugeMetricFamily(
                "tiergate_worker_ticks_held_seconds",
                "How long the worker's due clock ticks have waited for the forwarding of the ingress input "
                "sent before them (0: not waiting)",
                value=self.ticks_held(),
            )
        if self.late_share is not None:
            yield GaugeMetricFamily(
                "tiergate_worker_late_share",
                "Share of the worker's recent input (the last 1,000 events or so) that was late",
                value=self.late_share(),
            )
