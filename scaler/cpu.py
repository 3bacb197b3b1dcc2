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
        #: Every domain's (window, last tick) CPU%, computed in one numpy pass after an add().
        self._percents: dict[tuple[str, str], tuple[float | None, float | None]] | None = None

    def add(self, samples: Iterable[DomainSample]) -> None:
        self._percents = None
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
        if self._percents is None:
            self._percents = self._compute()
        window, last = self._percents.get((uri, name), (None, None))
        return last if last_only else window

    def _compute(self) -> dict[tuple[str, str], tuple[float | None, float | None]]:
        """All domains at once (a tick at 1,000 domains must not pay numpy's per-call cost a
        thousand times). Each interval's utilisation is weighted by its length, so the mean is
        sum(delta CPU / vCPUs) / sum(delta wall); vCPUs may change between samples."""
        keys = [key for key, history in self._samples.items() if len(history) >= 2]
        if not keys:
            return {}
        histories = [self._samples[key] for key in keys]
        lengths = np.array([len(history) for history in histories])
        wall = np.fromiter((s.sampled_at for h in histories for s in h), dtype=float)
        cpu = np.fromiter((s.cpu_time_ns for h in histories for s in h), dtype=float) / 1e9
        vcpus = np.fromiter((s.vcpus for h in histories for s in h), dtype=float)
        # Differences within each history: drop the one that spans two histories.
        intervals, busy = np.diff(wall), np.diff(cpu) / vcpus[1:]
        first = np.concatenate(([0], np.cumsum(lengths)[:-1]))
        within = np.ones(len(intervals), dtype=bool)
        within[first[1:] - 1] = False
        intervals, busy = np.where(within, intervals, 0.0), np.where(within, busy, 0.0)
        busy = np.where(intervals > 0, busy, 0.0)
        starts = first - np.arange(len(first))  # each history's first difference, in the cut array
        index = np.flatnonzero(within)
        window = _ratio(np.add.reduceat(busy[index], starts), np.add.reduceat(intervals[index], starts))
        ends = starts + lengths - 2
        last = _ratio(busy[index][ends], intervals[index][ends])
        return {key: (window[i], last[i]) for i, key in enumerate(keys)}


def _ratio(busy: np.ndarray, wall: np.ndarray) -> list[float | None]:
    """CPU% clipped to 0-100; None where no wall time passed."""
    with np.errstate(divide="ignore", invalid="ignore"):
        percent = np.clip(busy / wall * 100.0, 0.0, 100.0)
    return [None if w <= 0 else float(p) for p, w in zip(percent, wall, strict=True)]
