"""The policy lab: the policies by name, the standard load profiles every policy is measured on,
and the table their results are shown in. Shared by `virtscale-scaler simulate` and
`make bench-policy` (bench/policy.py)."""

from __future__ import annotations

from virtscale.load import ProfileSpec
from virtscale.scaler.baselines import HpaCpuPolicy, KedaPolicy, OraclePolicy, OriginalPolicy
from virtscale.scaler.policy import Policy, PolicyConfig
from virtscale.scaler.simulator import World

POLICIES = ("default", "original", "keda", "hpa-cpu", "oracle")

#: The standard profiles every policy is measured on (make bench-policy); jobs/s against a
#: VM that serves 1 / service_time jobs/s per vCPU.
STANDARD_PROFILES = {
    "step": ProfileSpec(kind="step", base=1, peak=8, start=300, duration=900, length=2400),
    "ramp": ProfileSpec(kind="ramp", base=0.5, peak=10, start=900, duration=600, length=3000),
    "spike": ProfileSpec(kind="spike", base=1, peak=12, start=600, duration=60, length=1800),
    "sine": ProfileSpec(kind="sine", base=0.5, peak=8, period=1800, length=7200),
    "bursty": ProfileSpec(
        kind="bursty", base=1, peak=10, start=120, duration=90, period=600, seed=7, length=7200
    ),
}


def make_policy(name: str, config: PolicyConfig, world: World, counts) -> Policy:
    """The policy called ``name``; the oracle is given the arrivals per second (``counts``)."""
    if name == "default":
        return Policy(config)
    if name == "original":
        return OriginalPolicy(config)
    if name == "keda":
        return KedaPolicy(config, slo=world.slo, service_time=world.service_time, vcpus=world.vcpus)
    if name == "hpa-cpu":
        return HpaCpuPolicy(config)
    return OraclePolicy(
        config,
        arrivals_per_second=counts,
        slo=world.slo,
        service_time=world.service_time,
        vcpus=world.vcpus,
        boot_delay=world.boot_delay,
        interval=world.interval,
    )


#: summary() key -> column header, in the order shown.
COLUMNS = {
    "load": "load",
    "policy": "policy",
    "vm_seconds": "VM-s",
    "work_vm_seconds": "work VM-s",
    "efficiency": "effic.",
    "p50": "p50 s",
    "p95": "p95 s",
    "p99": "p99 s",
    "max_backlog": "max backlog",
    "slo_violation_seconds": "SLO viol. s",
    "scale_actions": "actions",
}


def table(rows: list[dict]) -> str:
    """Simulation summaries (with their load) as a fixed-width text table."""
    lines = [" ".join(f"{header:>11}" for header in COLUMNS.values())]
    for row in rows:
        lines.append(" ".join(f"{_cell(row[key]):>11}" for key in COLUMNS))
    return "\n".join(lines)


def _cell(value) -> str:
    if isinstance(value, float):
        return f"{value:.3f}" if abs(value) < 10 else f"{value:.0f}"
    return str(value)
