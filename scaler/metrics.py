"""Prometheus metrics of the scaler (--metrics-port): the queue, the pool by state, CPU per domain,
what each signal recommends, the decision and its actions, and the scaler's own health.

Names follow Prometheus's conventions: base units (seconds, ratios 0-1), counters end in _total,
and every virtscale_* series carries the `queue` and `pool` it describes, so that several scalers
can share one Prometheus and one dashboard. A reading the tick did not get is absent from the
scrape, never 0: a query over it gives no value rather than a wrong one. The process_* and
python_info series describe the process and keep their standard names and labels."""

from __future__ import annotations

import collections
import math
from collections.abc import Iterable

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    Info,
    Metric,
    PlatformCollector,
    ProcessCollector,
    start_http_server,
)
from prometheus_client.registry import Collector

from virtscale import __version__, defaults
from virtscale.scaler.hypervisor import STATE_NAMES
from virtscale.scaler.loop import TickReport
from virtscale.scaler.policy import DESTROY, SHUTDOWN, START

#: Every state a pool domain is counted in: libvirt's, as the hypervisor names them (blocked counts
#: as running), and "saved" (shut off with a managed save image: a warm VM).
DOMAIN_STATES = tuple(dict.fromkeys([*STATE_NAMES.values(), "saved"]))

#: The actions the policy decides. Their counters exist at 0 from the start, so that increase()
#: sees the first one (a series born at 1 has no earlier sample to rise from).
ACTIONS = (START, SHUTDOWN, DESTROY)

#: A tick is one management API request plus one bulk libvirt call per host: well under a second
#: when all is well; the top buckets hold the ticks that waited for a timeout.
TICK_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)

#: A gauge set to this is left out of the scrape: the reading is missing, not 0.
ABSENT = math.nan


class ScaleLabels(Collector):
    """Adds the `queue` and `pool` labels to every series of ``inner`` and leaves out the gauges
    that hold ABSENT, so that each metric is defined once, without repeating those labels."""

    def __init__(self, inner: CollectorRegistry, labels: dict[str, str]):
        self.inner = inner
        self.labels = labels

    def collect(self) -> Iterable[Metric]:
        for family in self.inner.collect():
            labelled = Metric(family.name, family.documentation, family.type, family.unit)
            labelled.samples = [
                sample._replace(labels={**self.labels, **sample.labels})
                for sample in family.samples
                if not (family.type == "gauge" and math.isnan(sample.value))
            ]
            yield labelled


class ScalerMetrics:
    """The scaler's metrics, in a registry of their own; served on ``address:port`` when given a
    port (None: not served, as in tests, which read ``registry``)."""

    def __init__(
        self,
        port: int | None = None,
        *,
        address: str = "127.0.0.1",
        queue: str = defaults.QUEUE,
        pool: str = "vm",
        dry_run: bool = False,
        slo: float | None = None,
    ):
        self.dry_run = dry_run
        self.values = CollectorRegistry()
        self.registry = CollectorRegistry()
        self.registry.register(ScaleLabels(self.values, {"queue": queue, "pool": pool}))
        ProcessCollector(registry=self.registry)
        PlatformCollector(registry=self.registry)
        self._define_queue(slo)
        self._define_pool()
        self._define_decision()
        self._define_health()
        self._server = None
        if port is not None:
            self.serve(port, address)

    def _define_queue(self, slo: float | None) -> None:
        self.depth = self._gauge("virtscale_queue_depth", "Jobs in the queue, ready + unacknowledged")
        self.publish_rate = self._gauge(
            "virtscale_queue_publish_rate", "Jobs published to the queue per second, as the broker measures"
        )
        self.ack_rate = self._gauge(
            "virtscale_queue_ack_rate", "Jobs acknowledged per second, as the broker measures"
        )
        self.slo = self._gauge(
            "virtscale_slo_seconds", "Seconds a job may wait in the queue: the policy's objective (--slo)"
        )
        self.slo.set(ABSENT if slo is None else slo)

    def _define_pool(self) -> None:
        self.vms = Gauge("virtscale_vms", "Pool domains by state", ["state"], registry=self.values)
        self.host_vms = Gauge(
            "virtscale_host_vms",
            "Pool domains on each host (--connect URI) by state; absent while the host does not answer",
            ["host", "state"],
            registry=self.values,
        )
        self.host_up = Gauge(
            "virtscale_host_reachable",
            "1 if the host answered this tick, else 0",
            ["host"],
            registry=self.values,
        )
        self.cpu = Gauge(
            "virtscale_domain_cpu_ratio",
            "Share of a domain's vCPUs busy over the CPU window (0-1)",
            ["domain"],
            registry=self.values,
        )

    def _define_decision(self) -> None:
        self.desired = self._gauge("virtscale_desired_vms", "VMs the policy wants now")
        self.ready = self._gauge("virtscale_ready_vms", "Pool VMs whose worker consumes from the queue")
        self.booting = self._gauge("virtscale_booting_vms", "Pool VMs started and not consuming yet")
        self.recommended = Gauge(
            "virtscale_recommended_vms",
            "VMs each signal of the policy asks for (absent when a signal has nothing to say)",
            ["signal"],
            registry=self.values,
        )
        self.per_vm_rate = self._gauge(
            "virtscale_per_vm_rate", "Jobs per second one fully busy VM acknowledges, as the policy learned"
        )
        self.actions = Counter(
            "virtscale_scale_actions_total",
            "Actions carried out on pool domains, failed ones included; none on a dry run",
            ["action"],
            registry=self.values,
        )
        self.planned = Counter(
            "virtscale_planned_actions_total",
            "Actions the policy decided, carried out or not (a dry run only plans)",
            ["action"],
            registry=self.values,
        )
        for action in ACTIONS:
            self.actions.labels(action)
            self.planned.labels(action)
        self.action_failures = Counter(
            "virtscale_action_failures_total", "Actions libvirt did not carry out", registry=self.values
        )
        self.failed_vms = Counter(
            "virtscale_failed_vms_total",
            "Pool domains that crashed or did not consume within the boot timeout; none on a dry run",
            registry=self.values,
        )

    def _define_health(self) -> None:
        self.ticks = Counter("virtscale_ticks_total", "Scaler ticks", registry=self.values)
        self.tick_duration = Histogram(
            "virtscale_tick_duration_seconds",
            "Seconds one tick took: observe, decide, act, report",
            buckets=TICK_BUCKETS,
            registry=self.values,
        )
        self.last_tick = self._gauge(
            "virtscale_last_tick_timestamp_seconds", "Unix time of the last tick's observation"
        )
        self.degraded = self._gauge("virtscale_degraded", "1 when a signal was missing in the last tick")
        self.refused = self._gauge(
            "virtscale_broker_refused", "1 when the broker refused the scaler's credentials in the last tick"
        )
        self.leader = self._gauge(
            "virtscale_leader", "1 when this scaler led its pool in the last tick (0: a standby or a dry run)"
        )
        self.dry_run_marker = self._gauge("virtscale_dry_run", "1 when the scaler only plans (--dry-run)")
        self.dry_run_marker.set(1 if self.dry_run else 0)
        build = Info("virtscale_build", "The running release", registry=self.values)
        build.info({"version": __version__})

    def _gauge(self, name: str, documentation: str) -> Gauge:
        gauge = Gauge(name, documentation, registry=self.values)
        gauge.set(ABSENT)
        return gauge

    def serve(self, port: int, address: str = "127.0.0.1") -> None:
        """Serve /metrics on ``address:port``; OSError if it cannot be bound (in use, not ours)."""
        self._server, _thread = start_http_server(port, addr=address, registry=self.registry)

    def stop_serving(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def timing_tick(self):
        """A context manager that observes the seconds its block takes as one tick's duration."""
        return self.tick_duration.time()

    def record(self, report: TickReport) -> None:
        self.ticks.inc()
        self.last_tick.set(report.time)
        self._record_queue(report)
        self._record_pool(report)
        self._record_decision(report)
        self.degraded.set(1 if report.degraded else 0)
        self.refused.set(1 if report.refused else 0)
        self.leader.set(1 if report.leader else 0)

    def _record_queue(self, report: TickReport) -> None:
        reading = report.reading
        self.depth.set(_or_absent(reading.depth))
        self.publish_rate.set(_or_absent(reading.publish_rate))
        self.ack_rate.set(_or_absent(reading.ack_rate))

    def _record_hosts(self, report: TickReport) -> None:
        self.host_vms.clear()
        self.host_up.clear()
        for uri, host in report.hosts.items():
            self.host_up.labels(uri).set(1 if host["reachable"] else 0)
            for state, count in host["domains"].items() if host["reachable"] else ():
                self.host_vms.labels(uri, state).set(count)

    def _record_pool(self, report: TickReport) -> None:
        self._record_hosts(report)
        self.vms.clear()
        self.cpu.clear()
        for name, percent in report.cpu.items():
            if percent is not None:
                self.cpu.labels(name).set(percent / 100.0)
        # A domain the tick could not see makes the counts unknown, not lower; so does no domain
        # at all on a degraded tick (libvirt most likely did not answer).
        if report.unseen or (report.degraded and not report.samples):
            return
        states = collections.Counter(sample.state for sample in report.samples)
        for state in dict.fromkeys([*DOMAIN_STATES, *states]):
            self.vms.labels(state).set(states.get(state, 0))

    def _record_decision(self, report: TickReport) -> None:
        decision = report.decision
        signals = decision.signals
        self.desired.set(decision.desired)
        self.ready.set(_or_absent(signals.get("ready")))
        self.booting.set(_or_absent(signals.get("booting")))
        self.per_vm_rate.set(_or_absent(signals.get("per_vm_rate")))
        self.recommended.clear()
        for signal, wanted in (signals.get("recommendations") or {}).items():
            if wanted is not None:
                self.recommended.labels(signal).set(wanted)
        for action in decision.actions:
            self.planned.labels(action.action).inc()
            if not self.dry_run:
                self.actions.labels(action.action).inc()
        if report.failed_actions:
            self.action_failures.inc(len(report.failed_actions))
        # A dry run starts nothing, so its "failures" (a VM never started never consumes) are not.
        # A standby's judgements are the leader's to count (it would count each failed VM twice).
        failed = signals.get("failed_vms") or ()
        if failed and report.leader and not self.dry_run:
            self.failed_vms.inc(len(failed))


def _or_absent(value: float | None) -> float:
    return ABSENT if value is None else value
