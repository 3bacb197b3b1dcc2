"""The usual scaling policies, kept faithful to what they copy, for comparison in the simulator.

Each reuses the default policy's bookkeeping (booting, draining, failures, acting on
domains) and replaces only how many VMs it wants. Their own parameters are fixed here, as
the systems they copy ship them; they are not tuned against the default. What they share
with it (VMs started per tick at most, the wait before scaling to zero) comes from the config.
"""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np

from virtscale.scaler.policy import ROUNDING_SLACK, Observation, Policy, PolicyConfig, VmView

#: More starts in one tick than any pool has VMs: the oracle starts all it needs at once.
UNLIMITED_STARTS = 1 << 20


class OriginalPolicy(Policy):
    """The original: every 30 s it decides on the mean CPU% of the ready VMs (the scaler's CPU
    window, 30 s by default; VMs inside their cpu_settle left out): above 80% one VM more,
    below 80 (n-1)/n one fewer while more than one runs, else no change. One start at a time,
    30 s apart; a removal at once. Nothing else: no queue signal."""

    name = "original"
    #: Seconds between two decisions, and between two scale-ups.
    WINDOW = 30.0
    #: Mean CPU% above which a VM is added; a VM goes when the others would stay below it.
    THRESHOLD = 80.0

    def __init__(self, config: PolicyConfig):
        super().__init__(
            replace(
                config,
                scale_up_cooldown=self.WINDOW,
                scale_down_stabilization=0.0,
                max_start_per_tick=1,
                max_start_percent=0.0,
            )
        )
        self._last_decision = -math.inf
        self._deciding = False

    def _on_tick(self, obs: Observation) -> None:
        self._deciding = obs.now - self._last_decision >= self.WINDOW
        if self._deciding:
            self._last_decision = obs.now

    def recommend(self, obs: Observation, ready: list[VmView], current: int) -> dict[str, int | None]:
        if not self._deciding:
            return {"cpu": current}
        loads = self._settled_loads(ready, obs.now)
        if not loads:
            return {"cpu": current}
        mean = sum(loads) / len(loads)
        n = len(ready)
        if mean > self.THRESHOLD:
            return {"cpu": current + 1}
        # The original's test, i.e. mean < 80 (n-1)/n: the others could take this VM's load.
        if n > 1 and (self.THRESHOLD - mean) * n > self.THRESHOLD:
            return {"cpu": current - 1}
        return {"cpu": current}


class KedaPolicy(Policy):
    """KEDA's RabbitMQ scaler in QueueLength mode on the HPA: desired = ceil(depth / target),
    target = max(1, SLO / service time x vCPUs) (AWS's backlog-per-instance recipe); no
    scale-up cooldown, the HPA's default 300 s scale-down stabilization. Scale-up per step and
    the wait before scaling to zero come from the config (max(4, +100%) and idle_to_zero,
    300 s, by default: the HPA's and KEDA's cooldownPeriod)."""

    name = "keda"
    #: Seconds a lower recommendation must hold before pods go (the HPA's default).
    STABILIZATION = 300.0

    def __init__(self, config: PolicyConfig, *, slo: float, service_time: float, vcpus: int):
        super().__init__(replace(config, scale_up_cooldown=0.0, scale_down_stabilization=self.STABILIZATION))
        self.target = max(1.0, slo / service_time * vcpus)

    def recommend(self, obs: Observation, ready: list[VmView], current: int) -> dict[str, int | None]:
        if obs.depth is None:
            return {"backlog": None}
        return {"backlog": math.ceil(obs.depth / self.target)}


class HpaCpuPolicy(Policy):
    """The Kubernetes HPA on CPU: desired = ceil(ready x mean CPU% / 70%) over the ready VMs
    (those inside their cpu_settle left out), no change within a 10% tolerance or without a
    reading; no scale-up cooldown, 300 s scale-down stabilization; scale-up per step from the
    config (max(+4, +100%) by default, as the HPA's)."""

    name = "hpa-cpu"
    #: CPU% the HPA keeps the pods at.
    TARGET = 70.0
    #: Relative distance from the target within which nothing changes.
    TOLERANCE = 0.1
    #: Seconds a lower recommendation must hold before pods go (the HPA's default).
    STABILIZATION = 300.0

    def __init__(self, config: PolicyConfig):
        super().__init__(replace(config, scale_up_cooldown=0.0, scale_down_stabilization=self.STABILIZATION))

    def recommend(self, obs: Observation, ready: list[VmView], current: int) -> dict[str, int | None]:
        loads = self._settled_loads(ready, obs.now)
        if not loads:
            return {"cpu": current}
        ratio = (sum(loads) / len(loads)) / self.TARGET
        if abs(ratio - 1.0) <= self.TOLERANCE:
            return {"cpu": current}
        return {"cpu": math.ceil(len(ready) * ratio)}


class OraclePolicy(Policy):
    """A reference that knows the future; not deployable.

    VMs needed at second t: the fewest whose capacity clears, within a window of
    w = max(1, round(SLO / 2)) seconds, the work that arrives in [t, t + w):
    ceil(arrivals in it x service time / (w x vCPUs)). Windows half the SLO long, not SLO
    long, make it conservative: a window's work is cleared within half the SLO. At each tick
    it wants the most any second needs from now to one boot delay plus one interval ahead (a
    VM started now serves from then on; one still booting is capacity those seconds need too),
    so it starts VMs one boot delay ahead. No cooldown, no cap on starts per tick, no
    stabilization: VMs go, one a tick, as soon as they are not needed; once one boot delay
    ahead is past the end of the arrivals it wants none (the config's min_vms still holds).
    """

    name = "oracle"

    def __init__(
        self,
        config: PolicyConfig,
        *,
        arrivals_per_second,
        slo: float,
        service_time: float,
        vcpus: int,
        boot_delay: float,
        interval: float,
    ):
        super().__init__(
            replace(
                config,
                scale_up_cooldown=0.0,
                scale_down_stabilization=0.0,
                max_start_per_tick=UNLIMITED_STARTS,
            )
        )
        counts = np.asarray(arrivals_per_second, dtype=float)
        window = max(1, round(slo / 2))  # seconds: half the SLO, see the class docstring
        cumulative = np.concatenate([[0.0], np.cumsum(counts)])
        ends = np.minimum(np.arange(len(counts)) + window, len(counts))
        per_window = cumulative[ends] - cumulative[: len(counts)]
        self._needed = np.ceil(per_window * service_time / (window * vcpus) - ROUNDING_SLACK)
        self.boot_delay = boot_delay
        self.interval = interval

    def recommend(self, obs: Observation, ready: list[VmView], current: int) -> dict[str, int | None]:
        start = int(obs.now + self.boot_delay)
        stop = int(obs.now + self.boot_delay + self.interval) + 1
        if start >= len(self._needed):
            return {"oracle": 0}
        # A VM that would still be booting now is capacity the coming interval needs too.
        now_needed = self._needed[int(obs.now) : stop]
        return {"oracle": int(now_needed.max()) if len(now_needed) else 0}
