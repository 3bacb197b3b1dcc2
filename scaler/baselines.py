"""The usual scaling policies, kept faithful to what they copy, for comparison in the simulator.

Each reuses the default policy's bookkeeping (booting, draining, failures, acting on
domains) and replaces only how many VMs it wants. Their parameters are fixed here, as
the systems they copy ship them; they are not tuned against the default.
"""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
from virtscale.scaler.policy import Observation, Policy, PolicyConfig, VmView


class OriginalPolicy(Policy):
    """The original: mean CPU over a 30 s window above 80% adds one VM; below 80*(n-1)/n
    removes one; 30 s between decisions. Nothing else: no queue signal."""

    name = "original"
    WINDOW = 30.0

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

    def recommend(self, obs: Observation, ready: list[VmView], current: int) -> dict[str, int | None]:
        if obs.now - self._last_decision < self.WINDOW:
            return {"cpu": current}
        self._last_decision = obs.now
        loads = self._settled_loads(ready, obs.now)
        if not loads:
            return {"cpu": current}
        mean = sum(loads) / len(loads)
        n = len(ready)
        if mean > 80:
            return {"cpu": current + 1}
        if n > 1 and (80 - mean) * n > 80:  # the original's test, i.e. mean < 80 (n-1)/n
            return {"cpu": current - 1}
        return {"cpu": current}


class KedaPolicy(Policy):
    """KEDA's RabbitMQ scaler in QueueLength mode on the HPA: desired = ceil(depth / target),
    target = SLO / service time x vCPUs (AWS's backlog-per-instance recipe); the HPA's default
    300 s scale-down stabilization and KEDA's 300 s cooldown before scaling to the minimum."""

    name = "keda"

    def __init__(self, config: PolicyConfig, *, slo: float, service_time: float, vcpus: int):
        super().__init__(replace(config, scale_up_cooldown=0.0, scale_down_stabilization=300.0))
        self.target = max(1.0, slo / service_time * vcpus)

    def recommend(self, obs: Observation, ready: list[VmView], current: int) -> dict[str, int | None]:
        if obs.depth is None:
            return {"backlog": None}
        return {"backlog": math.ceil(obs.depth / self.target)}


class HpaCpuPolicy(Policy):
    """The Kubernetes HPA on CPU: desired = ceil(n x cpu / 70%), no change within a 10%
    tolerance, 300 s scale-down stabilization, scale-up at most max(+4, +100%) per step."""

    name = "hpa-cpu"
    TARGET = 70.0
    TOLERANCE = 0.1

    def __init__(self, config: PolicyConfig):
        super().__init__(replace(config, scale_up_cooldown=0.0, scale_down_stabilization=300.0))

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

    At each tick it looks at the arrivals that VMs started now would serve, from one boot
    delay ahead to one interval after that, and runs the fewest VMs whose capacity clears,
    within every SLO-long window there, the work that arrives in it:
    ceil(max arrivals in an SLO window x service time / (SLO x vCPUs)). It starts VMs one boot
    delay ahead, removes them as soon as they are not needed, and has no cooldowns.
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
            replace(config, scale_up_cooldown=0.0, scale_down_stabilization=0.0, max_start_per_tick=1 << 20)
        )
        counts = np.asarray(arrivals_per_second, dtype=float)
        window = max(1, round(slo / 2))
        cumulative = np.concatenate([[0.0], np.cumsum(counts)])
        ends = np.minimum(np.arange(len(counts)) + window, len(counts))
        per_window = cumulative[ends] - cumulative[: len(counts)]
        self._needed = np.ceil(per_window * service_time / (window * vcpus) - 1e-9)
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
