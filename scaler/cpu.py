"""CPU% per domain over a sliding window, from cumulative CPU-time samples.

CPU% = delta CPU time / (delta wall time x vCPUs) x 100. A domain that started or
restarted inside the window is measured only from its new start, and a counter that
goes backwards discards the history: no fake spike (the original counted a new VM's
whole boot) and no negative load (the original's reboot case).
"""

from __future__ import annotations

import collections
from collections.abc import Iterable

import numpy as np

from virtscale.scaler.hypervisor import DomainSample


class CpuWindow:
    def __init__(self, window: float):
        self.window = window
        self._samples: dict[tuple[str, str], collections.deque[DomainSample]] = {}

    def add(self, samples: Iterable[DomainSample]) -> None:
        seen = set()
        for sample in samples:
            key = (sample.uri, sample.name)
            seen.add(key)
            history = self._samples.setdefault(key, collections.deque())
            if sample.cpu_time_ns is None:
                history.clear()
                continue
            if history and (
                history[-1].run_id != sample.run_id or sample.cpu_time_ns < history[-1].cpu_time_ns
            ):
                history.clear()  # restarted: earlier counts belong to another run
            history.append(sample)
            while len(history) > 2 and sample.sampled_at - history[1].sampled_at >= self.window:
                history.popleft()
        for key in list(self._samples):
            if key not in seen:
                del self._samples[key]  # vanished from the pool

    def percent(self, uri: str, name: str, last_only: bool = False) -> float | None:
        """Mean CPU% over the window (or over the last tick only); None until two samples of
        the same run exist."""
        history = self._samples.get((uri, name))
        if not history or len(history) < 2:
            return None
        samples = list(history)[-2:] if last_only else list(history)
        wall = np.array([s.sampled_at for s in samples])
        cpu = np.array([s.cpu_time_ns for s in samples], dtype=float) / 1e9
        vcpus = np.array([s.vcpus for s in samples][1:], dtype=float)
        intervals = np.diff(wall)
        if intervals.sum() <= 0:
            return None
        # Time-weighted mean of each interval's utilisation (vCPUs may change between samples).
        utilisation = np.diff(cpu) / np.where(intervals > 0, intervals, np.inf) / vcpus
        percent = float(np.average(utilisation, weights=intervals) * 100.0)
        return min(max(percent, 0.0), 100.0)
