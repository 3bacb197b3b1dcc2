"""make chaos's faults: what each one does to the running system, and when it happens.

Each fault blocks until it is over (a cut connection restored, a killed process restarted) and
says what it hit; the harness logs its start and end. The schedule spreads the faults evenly
over the load, in an order where one fault's recovery rarely hides another's.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

#: Seconds a cut connection stays cut, per proxy (shorter than the boot timeout: a VM whose
#: worker is cut off longer than that is rightly failed by the scaler).
CUT_SECONDS = {"producer": 15.0, "collector": 15.0, "scaler-amqp": 15.0, "workers": 20.0, "management": 30.0}
#: Fewest seconds between the starts of two faults.
MIN_GAP = 25.0
#: Seconds a killed process stays dead before it is started again.
DEAD_SECONDS = 5.0

#: Every fault, in the order of the schedule.
KINDS = (
    "cut-producer",
    "stray-guest",
    "cut-collector",
    "kill-collector",
    "cut-management",
    "destroy-vm",
    "cut-scaler-amqp",
    "kill-scaler",
    "cut-workers",
    "restart-libvirtd",
    "restart-rabbitmq",
)


class System(Protocol):
    """What a fault needs from the harness."""

    def cut(self, proxy: str) -> None: ...
    def restore(self, proxy: str) -> None: ...
    def kill(self, component: str) -> None: ...
    def start_component(self, component: str) -> None: ...
    def restart_rabbitmq(self) -> None: ...
    def restart_libvirtd(self) -> None: ...
    def destroy_busy_vm(self) -> str: ...
    def start_broken_guest(self) -> str: ...


@dataclass(frozen=True)
class Planned:
    kind: str
    #: Seconds after the load started.
    at: float


def schedule(load_seconds: float, kinds: tuple[str, ...] = KINDS, lead: float = 40.0, tail: float = 60.0):
    """The faults spread evenly from ``lead`` s into the load to ``tail`` s before its end; as many
    of ``kinds`` (in order) as fit at least MIN_GAP apart."""
    window = max(load_seconds - lead - tail, 0.0)
    count = min(len(kinds), int(window // MIN_GAP) + 1) if window > 0 else 0
    if count == 0:
        return []
    gap = window / max(count - 1, 1)
    return [Planned(kind, round(lead + index * gap, 1)) for index, kind in enumerate(kinds[:count])]


def cut_for(proxy: str) -> Callable[[System], str]:
    def fault(system: System) -> str:
        system.cut(proxy)
        try:
            time.sleep(CUT_SECONDS[proxy])
        finally:
            system.restore(proxy)
        return f"{proxy} connections cut for {CUT_SECONDS[proxy]:g} s"

    return fault


def kill_for(component: str) -> Callable[[System], str]:
    def fault(system: System) -> str:
        try:
            system.kill(component)
            time.sleep(DEAD_SECONDS)
        finally:
            system.start_component(component)
        return f"{component} SIGKILLed, started again after {DEAD_SECONDS:g} s"

    return fault


def restart_rabbitmq(system: System) -> str:
    system.restart_rabbitmq()
    return "chaos RabbitMQ node stopped and started"


def restart_libvirtd(system: System) -> str:
    system.restart_libvirtd()
    return "libvirtd stopped (SIGTERM) and started"


INJECTORS: dict[str, Callable[[System], str]] = {
    "cut-producer": cut_for("producer"),
    "cut-collector": cut_for("collector"),
    "cut-scaler-amqp": cut_for("scaler-amqp"),
    "cut-workers": cut_for("workers"),
    "cut-management": cut_for("management"),
    "kill-collector": kill_for("collector"),
    "kill-scaler": kill_for("scaler"),
    "restart-rabbitmq": restart_rabbitmq,
    "restart-libvirtd": restart_libvirtd,
    "destroy-vm": lambda system: "virsh destroy " + system.destroy_busy_vm(),
    "stray-guest": lambda system: "started by hand: " + system.start_broken_guest(),
}


def inject(kind: str, system: System) -> dict:
    """Run one fault; its log entry (epoch start and end, what it did)."""
    start = time.time()
    try:
        detail = INJECTORS[kind](system)
    except Exception as exc:
        detail = f"could not inject: {exc}"
    entry = {"kind": kind, "start": start, "end": time.time(), "detail": detail}
    if kind == "stray-guest" and detail.startswith("started by hand: "):
        entry["domain"] = detail.removeprefix("started by hand: ")
    return entry
