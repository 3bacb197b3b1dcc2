"""make bench-policy: every policy on every standard profile, on several seeds, with a verdict.

Goal for the default policy: it meets the SLO on every profile; no baseline that also meets
the SLO uses fewer VM-seconds; its VM-seconds are within 15% of the oracle's.
"""

from __future__ import annotations

import time
from dataclasses import replace
from pathlib import Path

from virtscale.load import ProfileSpec, profile_rate
from virtscale.scaler.lab import POLICIES, STANDARD_PROFILES, make_policy, table
from virtscale.scaler.plots import plot_simulation
from virtscale.scaler.policy import PolicyConfig
from virtscale.scaler.simulator import World, arrival_times, arrivals_per_second, simulate

SEEDS = (1, 2, 3)
OUT = Path("var/bench")


def run(max_vms: int = 10) -> bool:
    """Every policy on every standard profile and seed; prints the table and the verdicts, then
    times a 24-hour trace. True when the default policy meets the goal everywhere."""
    config = PolicyConfig(min_vms=1, max_vms=max_vms)
    world = World(pool_size=max_vms, slo=config.slo)
    OUT.mkdir(parents=True, exist_ok=True)
    rows, verdicts, all_good = [], [], True
    started = time.perf_counter()
    for name, spec in STANDARD_PROFILES.items():
        for seed in SEEDS:
            profile_rows, verdict, good = run_profile(name, spec, seed, config, world)
            rows += profile_rows
            verdicts.append(verdict)
            all_good &= good
    elapsed = time.perf_counter() - started
    print(
        f"\nPolicy lab: {len(STANDARD_PROFILES)} profiles x {len(SEEDS)} seeds x {len(POLICIES)} policies "
        f"in {elapsed:.1f} s (SLO {world.slo:g} s, service {world.service_time:g} s, "
        f"boot {world.boot_delay:g} s)"
    )
    print(table(rows))
    print("\n".join(verdicts))
    print(f"goal {'met' if all_good else 'NOT met'}; plots in {OUT}/policy-*.png")
    time_a_day(config, world)
    return all_good


def run_profile(
    name: str, spec: ProfileSpec, seed: int, config: PolicyConfig, world: World
) -> tuple[list[dict], str, bool]:
    """Every policy on one profile and seed: the table rows, the verdict line, and whether the
    default policy met the goal (the SLO, no cheaper SLO-meeting baseline, within 15% of the oracle)."""
    counts = arrivals_per_second(profile_rate(spec), spec.length, seed)
    arrivals = arrival_times(counts, seed)
    results = {
        policy: simulate(make_policy(policy, config, world, counts), world, arrivals, horizon=spec.length)
        for policy in POLICIES
    }
    rows = [{"load": f"{name}/{seed}", **result.summary()} for result in results.values()]
    if seed == SEEDS[0]:
        plot_simulation(
            list(results.values()),
            str(OUT / f"policy-{name}.png"),
            f"{name} (seed {seed}): load, backlog and VMs per policy",
        )
    default = results["default"]
    cheaper = [
        p
        for p, r in results.items()
        if p not in ("default", "oracle") and r.meets_slo and r.vm_seconds < default.vm_seconds
    ]
    ratio = default.vm_seconds / results["oracle"].vm_seconds
    good = default.meets_slo and not cheaper and ratio <= 1.15
    verdict = (
        f"{name}/{seed}: default {'meets' if default.meets_slo else 'MISSES'} the SLO; "
        f"cheaper SLO-meeting baselines: {', '.join(cheaper) or 'none'}; "
        f"VM-s / oracle's = {ratio:.2f} -> {'ok' if good else 'NOT MET'}"
    )
    return rows, verdict, good


def time_a_day(config: PolicyConfig, world: World) -> None:
    """The default policy on a 24-hour sine trace at 1 s resolution: how long the simulator takes."""
    started = time.perf_counter()
    day_spec = replace(STANDARD_PROFILES["sine"], length=86400.0)
    counts = arrivals_per_second(profile_rate(day_spec), day_spec.length, 1)
    result = simulate(
        make_policy("default", config, world, counts),
        world,
        arrival_times(counts, 1),
        horizon=day_spec.length,
    )
    print(
        f"24-hour sine trace at 1 s resolution: {result.jobs} jobs simulated in "
        f"{time.perf_counter() - started:.1f} s"
    )
