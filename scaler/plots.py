"""Plots (PNG, SVG, PDF, ...): a live run's events file, and a simulation's time series."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt
from matplotlib.backend_bases import FigureCanvasBase


def plot_events(events: list[dict], path: str, title: str = "virtscale run") -> None:
    """Queue depth, VMs (running / consuming) and CPU% per VM over the run."""
    if not events:
        raise ValueError("no events to plot")
    start = events[0]["time"]
    times = [event["time"] - start for event in events]
    depth = [event["depth"] if event["depth"] is not None else float("nan") for event in events]
    running = [sum(1 for d in event["domains"].values() if d["state"] == "running") for event in events]
    consuming = [sum(1 for d in event["domains"].values() if d.get("consuming")) for event in events]
    names = sorted({name for event in events for name in event["domains"]})
    figure, (ax_depth, ax_vms, ax_cpu) = plt.subplots(3, 1, figsize=(10, 8), sharex=True)
    ax_depth.plot(times, depth, color="tab:red")
    ax_depth.set_ylabel("queue depth\n(ready + unacked)")
    ax_vms.step(times, running, where="post", label="running", color="tab:blue")
    ax_vms.step(times, consuming, where="post", label="consuming", color="tab:green", linestyle="--")
    ax_vms.step(
        times,
        [event["desired"] for event in events],
        where="post",
        label="desired",
        color="tab:gray",
        linestyle=":",
    )
    ax_vms.set_ylabel("VMs")
    ax_vms.legend(loc="upper right")
    for name in names:
        cpu = [(event["domains"].get(name) or {}).get("cpu") for event in events]
        ax_cpu.plot(times, [float("nan") if value is None else value for value in cpu], label=name)
    ax_cpu.set_ylabel("CPU % per VM")
    ax_cpu.set_ylim(0, 105)
    ax_cpu.set_xlabel("seconds")
    if names:
        ax_cpu.legend(loc="upper right", ncol=min(len(names), 4))
    for event in events:
        for action in event["actions"]:
            ax_vms.annotate(
                f"{action['action']} {action['domain']}",
                (event["time"] - start, 0),
                rotation=90,
                fontsize=7,
                va="bottom",
                color="dimgray",
            )
    figure.suptitle(title)
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


def plot_simulation(results, path: str, title: str) -> None:
    """Load, backlog and VMs over time for one or more simulated policies."""
    figure, (ax_load, ax_backlog, ax_vms) = plt.subplots(3, 1, figsize=(10, 8), sharex=True)
    first = results[0].series
    ax_load.plot(first["time"], first["rate"], color="black")
    ax_load.set_ylabel("arrivals / s")
    for result in results:
        series = result.series
        ax_backlog.plot(series["time"], series["backlog"], label=result.policy)
        ax_vms.step(series["time"], series["vms"], where="post", label=result.policy)
    ax_backlog.set_ylabel("waiting jobs")
    ax_vms.set_ylabel("VMs up")
    ax_vms.set_xlabel("seconds")
    ax_vms.legend(loc="upper right", ncol=min(len(results), 5))
    figure.suptitle(title)
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


def plot_formats() -> list[str]:
    """The file name extensions savefig can write (png, svg, pdf, ...), sorted."""
    return sorted(FigureCanvasBase.get_supported_filetypes())
