"""make demo: the whole system on real VMs, N -> N+1 -> back, with a live view and a plot.

Starts the collector and the scaler (min 1, max N) over two libvirt hosts of this machine
(qemu:///system and the session daemon of `make host-b`); the scaler creates every VM on
demand from the pool's template, spread over the hosts, and deletes them as it scales in.
It waits for the first VM to consume, then runs the producer with a step profile that the
pool can only serve by scaling out, followed by quiet. Ends with a summary and
var/demo/demo.png. Ctrl-C or `terminate` stops everything and shuts the VMs down.
"""

from __future__ import annotations

import argparse
import collections
import json
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.rule import Rule
from rich.table import Table
from rich.text import Text

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from deploy.processes import stop_in_order  # noqa: E402
from virtscale.scaler.live import domain_table as live_domain_table  # noqa: E402
from virtscale.scaler.live import host_label  # noqa: E402
from virtscale.scaler.plots import plot_events  # noqa: E402

BIN = ROOT / ".venv" / "bin"
OUT = ROOT / "var" / "demo"

#: The scaler's settings for the demo: ticks every 2 s, one VM started per tick at most, quick
#: to scale out and in again, so a two-minute step shows N -> N+1 -> back.
SCALER_FLAGS = [
    "--pool", "vm",
    "--min", "1",
    "--interval", "2",
    "--target-backlog", "40",
    "--max-start-per-tick", "1",
    "--scale-up-cooldown", "25",
    "--scale-down-stabilization", "30",
    "--boot-timeout", "150",
    "--drain-timeout", "60",
    "--metrics-port", "9477",
    "--shutdown-on-exit",
]  # fmt: skip

#: The demo's own lines ("demo: producer started ...") kept above the live table.
LOG_LINES = 6

STOP_HINT = "type 'terminate' and Enter, or press Ctrl-C, to stop everything"

#: Seconds a component has to stop after SIGTERM before it is killed: the scaler shuts the VMs
#: down on its way out, and a guest takes a while to power off.
STOP_TIMEOUT = 120.0

#: Seconds between two looks at the events file (the scaler writes one event every 2 s).
POLL_INTERVAL = 1.0


def credentials(user: str) -> list[str]:
    return [
        "--amqp-url",
        f"amqp://{user}@127.0.0.1:5672/%2F",
        "--password-file",
        str(ROOT / "var" / "secrets" / user),
    ]


def read_events(path: Path) -> list[dict]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


# -- the commands -------------------------------------------------------------------------------


def collector_command(store: str) -> list[str]:
    return [str(BIN / "virtscale-collector"), "run", *credentials("collector"), "--store", store]


def scaler_command(vms: int, events_path: Path, hosts: list[str]) -> list[str]:
    return [
        str(BIN / "virtscale-scaler"),
        "run",
        *credentials("scaler"),
        # Each VM the scaler creates gets its own broker user (make template's default).
        "--provisioner-password-file",
        str(ROOT / "var" / "secrets" / "provisioner"),
        *SCALER_FLAGS,
        *(flag for uri in hosts for flag in ("--connect", uri)),
        "--max",
        str(vms),
        "--events",
        str(events_path),
    ]


def producer_command(args: argparse.Namespace) -> list[str]:
    """The step profile: base rate, then the peak for step-length seconds, then base again."""
    return [
        str(BIN / "virtscale-producer"),
        *credentials("producer"),
        "--profile", "step",
        "--base", str(args.base),
        "--peak", str(args.peak),
        "--start", str(args.step_start),
        "--duration", str(args.step_length),
        "--seed", "1",
    ]  # fmt: skip


# -- what the events say (pure) -----------------------------------------------------------------


def running(event: dict) -> int:
    return sum(1 for domain in event["domains"].values() if domain["state"] == "running")


def first_vm_consuming(events: list[dict]) -> bool:
    """A VM's worker consumes: the pool can take jobs, so the producer may start."""
    return bool(events) and any(domain.get("consuming") for domain in events[-1]["domains"].values())


def load_served(events: list[dict]) -> bool:
    """The demo's success: the queue is empty and one VM runs again, after more than one ran."""
    if not events:
        return False
    last = events[-1]
    return last["depth"] == 0 and running(last) == 1 and any(running(event) > 1 for event in events)


def verdict(
    events: list[dict], *, elapsed: float, timeout: float, producer_finished: bool, scaler_exited: bool
) -> tuple[int, str] | None:
    """(exit status, why) once the demo is over, None while it goes on."""
    if elapsed > timeout:
        return 1, "demo: timed out"
    if producer_finished and load_served(events):
        return 0, "demo: load served and the pool is back to one VM"
    if scaler_exited:
        return 1, f"demo: the scaler exited; see {OUT / 'scaler.log'}"
    return None


# -- the live view --------------------------------------------------------------------------------


def one_line(text: str, style: str = "") -> Text:
    """A line that never wraps: cut with an ellipsis at the console's width."""
    return Text(text, style=style, no_wrap=True, overflow="ellipsis")


def domain_table(event: dict) -> Table:
    """The scaler's own live-view table: a VM the policy counts as booting shows as booting."""
    return live_domain_table(event["domains"], (event.get("signals") or {}).get("booting_vms") or ())


def tick_lines(event: dict, started: float) -> list[Text]:
    """What the scaler saw and decided in one tick, a line each."""
    depth = "?" if event["depth"] is None else event["depth"]
    actions = ", ".join(f"{action['action']} {action['domain']}" for action in event["actions"])
    seen = f"tick at +{event['time'] - started:.0f} s: queue depth {depth}, desired {event['desired']} VMs"
    lines = [
        one_line(seen),
        one_line(f"decision: {actions or 'no action'}", "bold" if actions else ""),
        one_line(f"because: {event['reason']}", "dim"),
    ]
    if event.get("degraded"):
        problems = "; ".join(event.get("problems") or ["a signal is missing"])
        lines.append(one_line(f"degraded: {problems}", "red"))
    return lines


def render_view(events: list[dict], started: float, log_lines: list[str], now: float) -> RenderableType:
    """The live view, a pure function of what the demo knows; no line is wider than the console."""
    clock = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(now))
    parts: list[RenderableType] = [one_line(line) for line in log_lines]
    if log_lines:
        parts.append(Rule(style="dim"))
    parts.append(one_line(f"virtscale demo  {clock}  ({now - started:.0f} s in)", "bold"))
    if events:
        parts.extend(tick_lines(events[-1], started))
        parts.append(domain_table(events[-1]))
    else:
        parts.append(one_line("waiting for the scaler's first tick ...", "dim"))
    parts.append(one_line(STOP_HINT, "dim"))
    return Group(*parts)


def live_line(event: dict, started: float) -> str:
    """One tick as one plain line, for output that is not a terminal (a pipe, a log file)."""
    vms = " ".join(
        f"{name}:{d['state'][:3]}"
        + (f"/{d['cpu']:.0f}%" if d.get("cpu") is not None else "")
        + {True: "*", None: "?"}.get(d.get("consuming"), "")
        for name, d in sorted(event["domains"].items())
    )
    actions = ", ".join(f"{a['action']} {a['domain']}" for a in event["actions"])
    hosts = collections.Counter(
        host_label(d["host"]) for d in event["domains"].values() if d.get("host") and d["state"] == "running"
    )
    vms += (
        "  [" + ", ".join(f"{label}: {count}" for label, count in sorted(hosts.items())) + "]"
        if hosts
        else ""
    )
    return (
        f"{event['time'] - started:6.0f}s depth {event['depth'] if event['depth'] is not None else '?':>5} "
        f"desired {event['desired']}  {vms}" + (f"  -> {actions}" if actions else "")
    )


class View:
    """On a terminal: the view redrawn in place on the alternate screen, the demo's own lines
    above the table (a line printed outside the view would be painted over), the screen restored
    on exit and those lines printed again on it. Elsewhere: each line and tick printed once."""

    def __init__(self, console: Console):
        self.console = console
        self.recent: collections.deque[str] = collections.deque(maxlen=LOG_LINES)
        self.said: list[str] = []
        self._live: Live | None = None
        self._last_tick: float | None = None

    def __enter__(self) -> View:
        if self.console.is_terminal:
            self._live = Live(console=self.console, screen=True, auto_refresh=False)
            self._live.__enter__()
        else:
            self.console.print(f"demo: {STOP_HINT}", markup=False, highlight=False, soft_wrap=True)
        return self

    def __exit__(self, *exc_info) -> None:
        if self._live is not None:
            self._live.__exit__(*exc_info)
            self._live = None
            for line in self.said:
                self.console.print(line, markup=False, highlight=False, soft_wrap=True)

    def say(self, line: str) -> None:
        self.said.append(line)
        self.recent.append(line)
        if self._live is None:
            self.console.print(line, markup=False, highlight=False, soft_wrap=True)

    def show(self, events: list[dict], started: float) -> None:
        if self._live is not None:
            self._live.update(render_view(events, started, list(self.recent), time.time()), refresh=True)
        elif events and events[-1]["time"] != self._last_tick:
            self._last_tick = events[-1]["time"]
            self.console.print(live_line(events[-1], started), markup=False, highlight=False, soft_wrap=True)


# -- the run --------------------------------------------------------------------------------------


def terminate_typed() -> bool:
    """`terminate` and Enter on the terminal (never blocks; nothing to read off a terminal)."""
    typed = sys.stdin.isatty() and select.select([sys.stdin], [], [], 0)[0]
    return bool(typed) and sys.stdin.readline().strip() == "terminate"


class Demo:
    """The demo's processes and where their output goes; each step of the run is one method."""

    def __init__(self, args: argparse.Namespace, view: View):
        self.args = args
        self.view = view
        self.events_path = OUT / "events.jsonl"
        self.store = f"sqlite:///{OUT / 'hashes.db'}"
        self.children: dict[str, subprocess.Popen] = {}
        self.stopping = False
        self.started = time.time()

    def request_stop(self, *_signal_args) -> None:
        self.stopping = True

    def prepare(self) -> None:
        """A clean var/demo: no events or store of an earlier run."""
        OUT.mkdir(parents=True, exist_ok=True)
        self.events_path.unlink(missing_ok=True)
        for stale in [*OUT.glob("hashes.db*"), *OUT.glob("*.log")]:
            stale.unlink()

    def start(self, name: str, command: list[str]) -> None:
        with open(OUT / f"{name}.log", "wb") as log:  # the child keeps its own copy of the file
            self.children[name] = subprocess.Popen(
                command, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, cwd=ROOT
            )

    def start_components(self) -> None:
        self.start("collector", collector_command(self.store))
        self.start("scaler", scaler_command(self.args.vms, self.events_path, self.args.connect))
        self.started = time.time()
        self.view.say(
            f"demo: collector and scaler started (logs in {OUT}); the scaler creates vm-1 first, "
            f"then more VMs across {len(self.args.connect)} host(s)."
        )

    def start_producer(self) -> None:
        self.start("producer", producer_command(self.args))
        args = self.args
        self.view.say(
            f"demo: producer started: {args.base:g}/s, then {args.peak:g}/s for {args.step_length:g} s, "
            f"then {args.base:g}/s"
        )

    def exited(self, name: str) -> bool:
        return name in self.children and self.children[name].poll() is not None

    def follow(self) -> int:
        """Show each tick, start the producer once a VM consumes, stop when the verdict is in."""
        while not self.stopping:
            events = read_events(self.events_path)
            self.view.show(events, self.started)
            if "producer" not in self.children and first_vm_consuming(events):
                self.start_producer()
            ending = verdict(
                events,
                elapsed=time.time() - self.started,
                timeout=self.args.timeout,
                producer_finished=self.exited("producer"),
                scaler_exited=self.exited("scaler"),
            )
            if ending is not None:
                self.view.say(ending[1])
                return ending[0]
            if terminate_typed():
                break
            time.sleep(POLL_INTERVAL)
        self.view.say("demo: stopping on request")
        return 1

    def stop_everything(self) -> None:
        """SIGTERM in order (the scaler shuts the VMs down on its way out); kill what hangs."""
        stop_in_order(self.children, ("producer", "scaler", "collector"), STOP_TIMEOUT)


# -- the summary ----------------------------------------------------------------------------------


def summary_lines(events: list[dict], started: float, produced: str, figures: dict | None) -> list[str]:
    lines = ["", "=== summary ===", f"produced: {produced}"]
    if figures is not None:
        lines += [
            f"stored: {figures['stored']} (duplicates ignored {figures['duplicates_ignored']}), "
            f"dead-lettered: {figures['dead_lettered']}",
            f"latency produced -> hashed: {figures['latency_seconds']}",
            f"per VM: {figures['per_worker']}",
        ]
    lines.append("VM timeline:")
    hosts: dict[str, str] = {}
    for event in events:
        hosts.update({name: d["host"] for name, d in event["domains"].items() if d.get("host")})
        for action in event["actions"]:
            where = f" on {host_label(hosts[action['domain']])}" if action["domain"] in hosts else ""
            lines.append(
                f"  {event['time'] - started:6.0f}s  {action['action']:<8} {action['domain']}{where}  "
                f"({event['reason'][:90]})"
            )
    return lines


def summarize(events_path: Path, store: str, started: float) -> None:
    events = read_events(events_path)
    producer_log = OUT / "producer.log"
    log_text = producer_log.read_text(errors="replace") if producer_log.exists() else ""
    produced = next((line for line in log_text.splitlines() if line.startswith("confirmed ")), "not run")
    stats = subprocess.run(
        [str(BIN / "virtscale-collector"), "stats", "--store", store, *credentials("scaler")],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    figures = json.loads(stats.stdout) if stats.returncode == 0 else None
    print("\n".join(summary_lines(events, started, produced, figures)))
    if events:
        plot_events(events, str(OUT / "demo.png"), "virtscale demo: queue depth, VMs, CPU per VM")
        print(f"plot: {OUT / 'demo.png'}")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="make demo", description=__doc__)
    parser.add_argument("--vms", type=int, default=3, help="most VMs in the pool (--max)")
    parser.add_argument(
        "--connect",
        action="append",
        default=[],
        metavar="URI",
        help="libvirt host, repeatable (default: qemu:///system)",
    )
    parser.add_argument("--base", type=float, default=1.0, help="jobs/s before and after the step")
    parser.add_argument("--peak", type=float, default=25.0, help="jobs/s during the step")
    parser.add_argument("--step-start", type=float, default=20.0)
    parser.add_argument("--step-length", type=float, default=120.0)
    parser.add_argument("--timeout", type=float, default=1200.0, help="give up after this many seconds")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    args.connect = args.connect or ["qemu:///system"]
    view = View(Console(highlight=False))
    demo = Demo(args, view)
    demo.prepare()
    signal.signal(signal.SIGINT, demo.request_stop)
    signal.signal(signal.SIGTERM, demo.request_stop)
    result = 1
    try:
        with view:
            demo.start_components()
            result = demo.follow()
    finally:
        if demo.children:
            print("demo: stopping everything (the scaler shuts the VMs down) ...", flush=True)
        demo.stop_everything()
    summarize(demo.events_path, demo.store, demo.started)
    return result


if __name__ == "__main__":
    sys.exit(main())
