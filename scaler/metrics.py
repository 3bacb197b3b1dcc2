"""Prometheus metrics of the scaler (--metrics-port): queue, VMs by state, CPU, decisions."""

from __future__ import annotations

import collections

from prometheus_client import CollectorRegistry, Counter, Gauge, start_http_server

from virtscale.scaler.loop import TickReport


class ScalerMetrics:
    """The scaler's gauges and counters, in a registry of their own; served when given a port."""

    def __init__(self, port: int | None = None):
        self.registry = CollectorRegistry()
        self.depth = Gauge("virtscale_queue_depth", "Jobs ready + unacked", registry=self.registry)
        self.vms = Gauge("virtscale_vms", "Pool domains by state", ["state"], registry=self.registry)
        self.cpu = Gauge(
            "virtscale_domain_cpu_percent", "CPU%% over the window", ["domain"], registry=self.registry
        )
        self.desired = Gauge("virtscale_desired_vms", "VMs the policy wants", registry=self.registry)
        self.degraded = Gauge("virtscale_degraded", "1 when a signal was missing", registry=self.registry)
        self.actions = Counter("virtscale_scale_actions", "Actions taken", ["action"], registry=self.registry)
        self.ticks = Counter("virtscale_ticks", "Scaler ticks", registry=self.registry)
        if port is not None:
            self.serve(port)

    def serve(self, port: int) -> None:
        """Serve /metrics on 127.0.0.1:``port``; OSError if the port cannot be bound (in use)."""
        start_http_server(port, addr="127.0.0.1", registry=self.registry)

    def record(self, report: TickReport) -> None:
        self.ticks.inc()
        if report.reading.depth is not None:
            self.depth.set(report.reading.depth)
        states = collections.Counter(sample.state for sample in report.samples)
        for state in ("running", "shutoff", "shutting-down", "paused", "crashed"):
            self.vms.labels(state).set(states.get(state, 0))
        self.cpu.clear()
        for name, cpu in report.cpu.items():
            if cpu is not None:
                self.cpu.labels(name).set(cpu)
        self.desired.set(report.decision.desired)
        self.degraded.set(1 if report.degraded else 0)
        for action in report.decision.actions:
            self.actions.labels(action.action).inc()
