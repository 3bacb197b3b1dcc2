"""The scaler's Prometheus metrics as Prometheus sees them: served after a real tick (libvirt's test
driver, the real RabbitMQ), scraped over HTTP, linted by promtool; the alert rules checked and
unit-tested by promtool. Without promtool these tests skip locally and fail under CI=true."""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
from pathlib import Path

import pytest
import requests
import yaml
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import known_jobs, publish_raw, require, wait_until
from tests.support.clock import FakeClock
from virtscale.scaler.hypervisor import Hypervisor
from virtscale.scaler.loop import Scaler
from virtscale.scaler.metrics import ScalerMetrics
from virtscale.scaler.policy import Policy, PolicyConfig
from virtscale.scaler.queue_monitor import QueueMonitor

ROOT = Path(__file__).resolve().parent.parent.parent
NODE = ROOT / "tests" / "data" / "pool-node.xml"
ALERTS = ROOT / "deploy" / "prometheus" / "alerts.yml"
ALERT_TESTS = ROOT / "deploy" / "prometheus" / "alerts.test.yml"
DASHBOARD = ROOT / "deploy" / "grafana" / "virtscale.json"


@pytest.fixture(scope="module")
def promtool() -> str:
    path = shutil.which("promtool")
    require(path is not None, "promtool (Debian package prometheus, installed by make setup)")
    return path


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def make_scaler(broker_url, names, management, *, dry_run=False) -> Scaler:
    clock = FakeClock()
    config = PolicyConfig(min_vms=1, max_vms=3, target_backlog=50, scale_up_cooldown=0, slo=45)
    hypervisor = Hypervisor(f"test://{NODE}", "vm", clock=clock)
    monitor = QueueMonitor(management, ("guest", "guest"), "/", names.jobs, broker_url)
    return Scaler([hypervisor], monitor, Policy(config), window=30, dry_run=dry_run, clock=clock)


def loaded_tick(broker_url, names, management, metrics: ScalerMetrics, *, dry_run=False) -> None:
    """120 jobs waiting, then one tick of a scaler whose reports go to ``metrics``."""
    scaler = make_scaler(broker_url, names, management, dry_run=dry_run)
    scaler.on_tick = metrics.record
    publish_raw(broker_url, names.jobs, known_jobs(120, seed=1, produced_at=1.0)[1])

    def counted() -> bool:
        # The management API's figures for a new queue lag by a few seconds; until then the
        # reading is degraded (the depth comes from AMQP).
        reading = scaler.monitor.read()
        return (reading.depth or 0) >= 120 and not reading.degraded

    wait_until(counted, 30, "the management API counting 120 jobs")
    with metrics.timing_tick():
        scaler.tick()


def scrape(port: int) -> str:
    return requests.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text


def samples(body: str) -> dict[tuple[str, frozenset], float]:
    """(sample name, its labels) -> value, for every sample in an exposition text."""
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(body)
        for sample in family.samples
    }


def value(found: dict, name: str, **labels: str) -> float | None:
    return found.get((name, frozenset(labels.items())))


@pytest.mark.broker
def test_a_served_scrape_reports_the_tick_with_queue_and_pool_labels(broker_url, names, management):
    port = free_port()
    metrics = ScalerMetrics(port, queue=names.jobs, pool="vm", slo=45)
    try:
        loaded_tick(broker_url, names, management, metrics)
        found = samples(scrape(port))
    finally:
        metrics.stop_serving()
    scale = {"queue": names.jobs, "pool": "vm"}
    assert value(found, "virtscale_queue_depth", **scale) == 120
    assert value(found, "virtscale_vms", state="shutoff", **scale) == 4, "observed before the starts"
    assert value(found, "virtscale_vms", state="crashed", **scale) == 0, "every state is counted"
    assert value(found, "virtscale_scale_actions_total", action="start", **scale) == 3
    assert value(found, "virtscale_planned_actions_total", action="start", **scale) == 3
    assert value(found, "virtscale_desired_vms", **scale) == 3
    assert value(found, "virtscale_recommended_vms", signal="backlog", **scale) == 3
    assert value(found, "virtscale_slo_seconds", **scale) == 45
    assert value(found, "virtscale_dry_run", **scale) == 0
    assert value(found, "virtscale_tick_duration_seconds_count", **scale) == 1
    assert value(found, "virtscale_degraded", **scale) == 0
    assert value(found, "process_cpu_seconds_total") is not None
    virtscale = [key for key in found if key[0].startswith("virtscale_")]
    assert all({"queue", "pool"} <= {label for label, _ in labels} for _name, labels in virtscale)


@pytest.mark.broker
def test_a_dry_run_plans_actions_but_counts_none_taken(broker_url, names, management):
    metrics = ScalerMetrics(queue=names.jobs, pool="vm", dry_run=True)
    loaded_tick(broker_url, names, management, metrics, dry_run=True)
    found = samples(generate_latest(metrics.registry).decode())
    scale = {"queue": names.jobs, "pool": "vm"}
    assert value(found, "virtscale_planned_actions_total", action="start", **scale) == 3
    assert value(found, "virtscale_scale_actions_total", action="start", **scale) == 0
    assert value(found, "virtscale_dry_run", **scale) == 1


@pytest.mark.broker
def test_promtool_accepts_a_live_scrape(broker_url, names, management, promtool):
    port = free_port()
    metrics = ScalerMetrics(port, queue=names.jobs, slo=45)
    try:
        loaded_tick(broker_url, names, management, metrics)
        body = scrape(port)
    finally:
        metrics.stop_serving()
    check = subprocess.run(
        [promtool, "check", "metrics"], input=body, capture_output=True, text=True, timeout=60
    )
    assert check.returncode == 0, check.stdout + check.stderr


def test_promtool_accepts_the_alert_rules(promtool):
    check = subprocess.run(
        [promtool, "check", "rules", str(ALERTS)], capture_output=True, text=True, timeout=60
    )
    assert check.returncode == 0, check.stdout + check.stderr
    assert "SUCCESS" in check.stdout


def test_the_alert_rules_fire_when_they_should_and_only_then(promtool):
    """deploy/prometheus/alerts.test.yml: series that should and should not fire each alert."""
    check = subprocess.run(
        [promtool, "test", "rules", str(ALERT_TESTS)], capture_output=True, text=True, timeout=60
    )
    assert check.returncode == 0, check.stdout + check.stderr


@pytest.mark.broker
def test_the_run_command_serves_on_the_metrics_address_with_its_flags_as_labels(
    broker_url, names, management, processes
):
    port = free_port()
    run = processes.start(
        "virtscale.scaler",
        "run",
        "--connect",
        f"test://{NODE}",
        "--amqp-url",
        broker_url,
        "--management-url",
        management,
        "--queue",
        names.jobs,
        "--dry-run",
        "--interval",
        "0.5",
        "--slo",
        "40",
        "--metrics-port",
        str(port),
        "--metrics-address",
        "127.0.0.1",
    )

    def ticked() -> dict | None:
        assert run.poll() is None, processes.output(run)
        try:
            found = samples(scrape(port))
        except requests.ConnectionError:
            return None
        scale = {"queue": names.jobs, "pool": "vm"}
        return found if (value(found, "virtscale_ticks_total", **scale) or 0) >= 2 else None

    found = wait_until(ticked, 60, "two ticks scraped")
    scale = {"queue": names.jobs, "pool": "vm"}
    assert value(found, "virtscale_dry_run", **scale) == 1
    assert value(found, "virtscale_slo_seconds", **scale) == 40
    assert value(found, "virtscale_tick_duration_seconds_count", **scale) >= 1
    assert value(found, "virtscale_last_tick_timestamp_seconds", **scale) > 0


def test_every_dashboard_query_is_valid_promql(promtool, tmp_path):
    """Each query of deploy/grafana/virtscale.json, its Grafana variables filled in as Grafana
    would, checked by promtool as the expression of a recording rule."""
    dashboard = json.loads(DASHBOARD.read_text())
    queries = [target["expr"] for panel in dashboard["panels"] for target in panel["targets"]]
    filled = {"${queue:regex}": "licenses", "${pool:regex}": "vm-\\\\*", "$__rate_interval": "1m"}
    rules = []
    for number, query in enumerate(queries):
        for variable, value_ in filled.items():
            query = query.replace(variable, value_)
        rules.append({"record": f"dashboard:query_{number}", "expr": query})
    rule_file = tmp_path / "dashboard-rules.yml"
    rule_file.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    check = subprocess.run(
        [promtool, "check", "rules", str(rule_file)], capture_output=True, text=True, timeout=60
    )
    assert check.returncode == 0, check.stdout + check.stderr
    assert f"SUCCESS: {len(queries)} rules found" in check.stdout
