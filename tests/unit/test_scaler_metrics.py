"""ScalerMetrics without a port: what one tick's report becomes in the exposition text. A missing
reading is absent (never 0), every virtscale_* series names its queue and pool, a dry run takes
no action; and `run --metrics-address` is checked like every flag."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import run_module
from virtscale import __version__
from virtscale.scaler.commands.run import listen_address
from virtscale.scaler.hypervisor import STATE_NAMES, DomainSample
from virtscale.scaler.loop import TickReport
from virtscale.scaler.metrics import ScalerMetrics
from virtscale.scaler.policy import Action, Decision
from virtscale.scaler.queue_monitor import QueueReading

SCALE = {"queue": "jobs", "pool": "vm"}


def sample(name: str, state: str) -> DomainSample:
    return DomainSample(name, "test:///default", state, 1, 10**9, 2, 100.0)


def report(
    *,
    depth: int | None = 7,
    rates: tuple[float | None, float | None] = (2.5, 2.0),
    samples: tuple[DomainSample, ...] = (sample("vm-1", "running"), sample("vm-2", "shutoff")),
    cpu: dict | None = None,
    actions: tuple[Action, ...] = (Action("vm-2", "start"),),
    signals: dict | None = None,
    problems: tuple[str, ...] = (),
    failed_actions: tuple[str, ...] = (),
) -> TickReport:
    reading = QueueReading(ready=depth, unacked=0, consumers=1, publish_rate=rates[0], ack_rate=rates[1])
    decision = Decision(
        2,
        actions,
        "reason",
        {
            "ready": 1,
            "booting": 0,
            "recommendations": {"backlog": 2, "throughput": None, "cpu": 1},
            "per_vm_rate": 1.25,
        }
        if signals is None
        else signals,
    )
    return TickReport(
        1700000000.5,
        reading,
        list(samples),
        {"vm-1": 42.0, "vm-2": None} if cpu is None else cpu,
        decision,
        list(problems),
        list(failed_actions),
    )


def exposition(metrics: ScalerMetrics) -> dict[tuple[str, frozenset], float]:
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(generate_latest(metrics.registry).decode())
        for s in family.samples
    }


def value(found: dict, name: str, **labels: str) -> float | None:
    return found.get((name, frozenset({**SCALE, **labels}.items())))


def names(found: dict) -> set[str]:
    return {name for name, _labels in found}


def recorded(tick: TickReport, **options) -> dict:
    metrics = ScalerMetrics(queue="jobs", pool="vm", **options)
    metrics.record(tick)
    return exposition(metrics)


def test_a_tick_is_reported_with_queue_and_pool_on_every_virtscale_series():
    found = recorded(report(), slo=30)
    assert value(found, "virtscale_queue_depth") == 7
    assert value(found, "virtscale_queue_publish_rate") == 2.5
    assert value(found, "virtscale_queue_ack_rate") == 2.0
    assert value(found, "virtscale_desired_vms") == 2
    assert value(found, "virtscale_ready_vms") == 1
    assert value(found, "virtscale_booting_vms") == 0
    assert value(found, "virtscale_per_vm_rate") == 1.25
    assert value(found, "virtscale_slo_seconds") == 30
    assert value(found, "virtscale_last_tick_timestamp_seconds") == 1700000000.5
    assert value(found, "virtscale_ticks_total") == 1
    assert value(found, "virtscale_degraded") == 0
    assert value(found, "virtscale_build_info", version=__version__) == 1
    for name, labels in found:
        if name.startswith("virtscale_"):
            assert {"queue", "pool"} <= dict(labels).keys(), name


def test_cpu_is_a_ratio_and_an_unknown_cpu_is_absent():
    found = recorded(report())
    assert value(found, "virtscale_domain_cpu_ratio", domain="vm-1") == pytest.approx(0.42)
    assert value(found, "virtscale_domain_cpu_ratio", domain="vm-2") is None
    assert not any("percent" in name for name in names(found))


def test_missing_readings_are_absent_never_zero():
    found = recorded(
        report(
            depth=None,
            rates=(None, None),
            signals={"recommendations": {"backlog": None}, "per_vm_rate": None},
            problems=("management API unreachable",),
        )
    )
    for name in (
        "virtscale_queue_depth",
        "virtscale_queue_publish_rate",
        "virtscale_queue_ack_rate",
        "virtscale_per_vm_rate",
        "virtscale_ready_vms",
        "virtscale_booting_vms",
        "virtscale_slo_seconds",
    ):
        assert name not in names(found), name
    assert value(found, "virtscale_recommended_vms", signal="backlog") is None
    assert value(found, "virtscale_degraded") == 1


def test_each_signal_has_its_recommendation_and_one_with_nothing_to_say_is_absent():
    found = recorded(report())
    assert value(found, "virtscale_recommended_vms", signal="backlog") == 2
    assert value(found, "virtscale_recommended_vms", signal="cpu") == 1
    assert value(found, "virtscale_recommended_vms", signal="throughput") is None


def test_every_domain_state_is_counted_zero_included():
    found = recorded(report(samples=(sample("vm-1", "running"), sample("vm-2", "paused"))))
    for state in {*STATE_NAMES.values(), "saved"}:
        expected = 1 if state in ("running", "paused") else 0
        assert value(found, "virtscale_vms", state=state) == expected, state


def test_without_any_domain_on_a_degraded_tick_the_counts_are_unknown():
    found = recorded(report(samples=(), cpu={}, problems=("libvirt unreachable",)))
    assert not [key for key in found if key[0] == "virtscale_vms"]


def test_with_a_domain_unseen_the_counts_are_unknown():
    tick = report(problems=("libvirt listed no domain",))
    tick.unseen = ["vm-3"]  # listed before, not seen this tick
    found = recorded(tick)
    assert not [key for key in found if key[0] == "virtscale_vms"]
    assert value(found, "virtscale_domain_cpu_ratio", domain="vm-1") == pytest.approx(0.42)


def test_a_dry_run_plans_but_takes_no_action():
    found = recorded(report(), dry_run=True)
    assert value(found, "virtscale_dry_run") == 1
    assert value(found, "virtscale_planned_actions_total", action="start") == 1
    assert value(found, "virtscale_scale_actions_total", action="start") == 0


def test_a_real_run_counts_actions_taken_and_those_that_failed():
    found = recorded(report(failed_actions=("start vm-2: no such domain",)))
    assert value(found, "virtscale_dry_run") == 0
    assert value(found, "virtscale_scale_actions_total", action="start") == 1
    assert value(found, "virtscale_planned_actions_total", action="start") == 1
    assert value(found, "virtscale_scale_actions_total", action="destroy") == 0, "exists before the first"
    assert value(found, "virtscale_action_failures_total") == 1


@pytest.mark.parametrize(("dry_run", "counted"), [(False, 2), (True, 0)])
def test_failed_vms_are_counted_only_when_the_scaler_acts(dry_run, counted):
    signals = {"ready": 1, "booting": 0, "failed_vms": ["vm-2", "vm-3"]}
    failing = report(actions=(Action("vm-2", "destroy"), Action("vm-3", "destroy")), signals=signals)
    found = recorded(failing, dry_run=dry_run)
    assert value(found, "virtscale_failed_vms_total") == counted, "a dry run starts nothing to fail"
    assert value(recorded(report()), "virtscale_failed_vms_total") == 0, "exists before the first"


class RefusedReport(TickReport):
    """A tick whose broker refused the scaler's credentials."""

    refused = True


def test_refused_credentials_raise_their_gauge():
    tick = report()
    refused = RefusedReport(**{name: getattr(tick, name) for name in tick.__dataclass_fields__})
    assert value(recorded(refused), "virtscale_broker_refused") == 1
    assert value(recorded(report()), "virtscale_broker_refused") == 0


def test_the_tick_duration_is_observed_in_seconds():
    metrics = ScalerMetrics(queue="jobs", pool="vm")
    with metrics.timing_tick():
        pass
    found = exposition(metrics)
    assert value(found, "virtscale_tick_duration_seconds_count") == 1
    assert value(found, "virtscale_tick_duration_seconds_bucket", le="+Inf") == 1


def test_help_texts_are_plain_and_process_metrics_are_there():
    text = generate_latest(ScalerMetrics().registry).decode()
    assert "%%" not in text
    assert "process_cpu_seconds_total" in text
    assert "python_info" in text


@pytest.mark.parametrize("address", ["127.0.0.1", "0.0.0.0", "::1", "localhost", "scaler-1.example.org"])
def test_a_metrics_address_is_an_ip_address_or_a_host_name(address):
    assert listen_address(address) == address


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--metrics-port", "9108", "--metrics-address", "http://0.0.0.0"], "--metrics-address"),
        (["--metrics-port", "9108", "--metrics-address", "10.0.0.999"], "--metrics-address"),
        (["--metrics-port", "9108", "--metrics-address", "a b"], "--metrics-address"),
        (["--metrics-address", "127.0.0.1"], "--metrics-address needs --metrics-port"),
        (["--metrics-port", "9108", "--metrics-address", "192.0.2.1"], "--metrics-port 9108 on 192.0.2.1"),
    ],
)
def test_a_bad_metrics_address_is_exit_2_with_one_line(argv, message):
    run = run_module("virtscale.scaler", "run", "--connect", "test:///default", *argv, timeout=60)
    assert run.returncode == 2, run.stderr
    lines = run.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], run.stderr


# -- what the dashboard and the alert rules query ---------------------------------------------------

ROOT = Path(__file__).resolve().parent.parent.parent
DASHBOARD = ROOT / "deploy" / "grafana" / "virtscale.json"
ALERTS = ROOT / "deploy" / "prometheus" / "alerts.yml"
#: A metric name in a PromQL expression: ours, and the process's.
METRIC_NAME = re.compile(r"\b(?:virtscale|process)_[a-z0-9_]+\b")


def dashboard_queries(dashboard: dict) -> list[str]:
    queries = [target["expr"] for panel in dashboard["panels"] for target in panel["targets"]]
    variables = dashboard["templating"]["list"]
    return queries + [v["query"]["query"] for v in variables if v["type"] == "query"]


def exported_names() -> set[str]:
    """Every sample name a ScalerMetrics exposes after a tick that had every reading."""
    metrics = ScalerMetrics(queue="jobs", pool="vm", slo=60)
    metrics.record(report())
    with metrics.timing_tick():
        pass
    return names(exposition(metrics))


def test_the_dashboard_queries_only_metrics_the_scaler_exports():
    dashboard = json.loads(DASHBOARD.read_text())
    queried = {name for query in dashboard_queries(dashboard) for name in METRIC_NAME.findall(query)}
    assert queried, "the dashboard queries something"
    assert queried <= exported_names(), queried - exported_names()


def test_the_dashboard_imports_with_a_datasource_variable():
    dashboard = json.loads(DASHBOARD.read_text())
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["DS_PROMETHEUS"]["type"] == "datasource"
    assert variables["DS_PROMETHEUS"]["query"] == "prometheus"
    ids = [panel["id"] for panel in dashboard["panels"]]
    assert len(ids) == len(set(ids)), "panel ids are unique"
    for panel in dashboard["panels"]:
        for part in (panel, *panel["targets"]):
            assert part["datasource"] == {"type": "prometheus", "uid": "${DS_PROMETHEUS}"}, panel["title"]
        for target in panel["targets"]:
            assert 'queue=~"${queue:regex}", pool=~"${pool:regex}"' in target["expr"], panel["title"]


def test_the_alert_rules_query_only_metrics_the_scaler_exports():
    rules = yaml.safe_load(ALERTS.read_text())["groups"][0]["rules"]
    queried = {name for rule in rules for name in METRIC_NAME.findall(rule["expr"])}
    assert {"virtscale_degraded", "virtscale_slo_seconds"} <= queried
    assert queried <= exported_names(), queried - exported_names()


def test_the_leader_gauge_says_whether_this_scaler_leads_and_a_standby_counts_no_failure():
    signals = {"ready": 1, "booting": 0, "failed_vms": ["vm-2"]}
    leading = report(signals=signals)
    assert value(recorded(leading), "virtscale_leader") == 1
    standby = report(actions=(), signals=signals)
    standby.leader = False
    found = recorded(standby)
    assert value(found, "virtscale_leader") == 0
    assert value(found, "virtscale_failed_vms_total") == 0, "the leader counts it, not each standby"
