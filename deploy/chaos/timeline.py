"""make chaos's timeline: queue depth and VMs over the run, degraded ticks shaded, a line per fault."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt
from report import consuming_count, degraded_spans, running_count


def plot_timeline(events: list[dict], faults: list[dict], started: float, path: str, title: str) -> None:
    if not events:
        raise ValueError("no events to plot")
    times = [event["time"] - started for event in events]
    depth = [float("nan") if event["depth"] is None else event["depth"] for event in events]
    figure, (ax_depth, ax_vms) = plt.subplots(2, 1, figsize=(12, 7), sharex=True)
    ax_depth.plot(times, depth, color="tab:red")
    ax_depth.set_ylabel("queue depth\n(ready + unacked)")
    ax_vms.step(times, [running_count(e) for e in events], where="post", label="running", color="tab:blue")
    ax_vms.step(
        times,
        [consuming_count(e) for e in events],
        where="post",
        label="consuming",
        color="tab:green",
        ls="--",
    )
    ax_vms.step(
        times, [e["desired"] for e in events], where="post", label="desired", color="tab:gray", ls=":"
    )
    ax_vms.set_ylabel("VMs")
    ax_vms.set_xlabel("seconds since the scaler started")
    for axis in (ax_depth, ax_vms):
        for start, end in degraded_spans(events):
            axis.axvspan(start - started, end - started, color="orange", alpha=0.25, lw=0)
        for fault in faults:
            axis.axvline(fault["start"] - started, color="black", lw=0.8, ls="--")
    for fault in faults:
        ax_depth.annotate(
            fault["kind"],
            (fault["start"] - started, 1.0),
            xycoords=("data", "axes fraction"),
            rotation=90,
            fontsize=7,
            va="top",
            ha="right",
        )
    ax_vms.plot([], [], color="orange", alpha=0.4, lw=6, label="degraded ticks")
    ax_vms.plot([], [], color="black", lw=0.8, ls="--", label="fault")
    ax_vms.legend(loc="upper left", fontsize=8, ncol=5)
    figure.suptitle(title)
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
