"""make demo: the whole system on real VMs, N -> N+1 -> back, with a live view and a plot.

Starts the collector and the scaler (min 1, max N), waits for the first VM to consume,
then runs the producer with a step profile that the pool can only serve by scaling out,
followed by quiet. Ends with a summary and var/demo/demo.png. Ctrl-C or `terminate`
stops everything and shuts the VMs down.
"""

from __future__ import annotations

import argparse
import json
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from virtscale.scaler.plots import plot_events  # noqa: E402

BIN = ROOT / ".venv" / "bin"
OUT = ROOT / "var" / "demo"


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


def live_line(event: dict, started: float) -> str:
    vms = " ".join(
        f"{name}:{d['state'][:3]}"
        + (f"/{d['cpu']:.0f}%" if d.get("cpu") is not None else "")
        + ("*" if d.get("consuming") else "")
        for name, d in sorted(event["domains"].items())
    )
    actions = ", ".join(f"{a['action']} {a['domain']}" for a in event["actions"])
    return (
        f"{event['time'] - started:6.0f}s depth {event['depth'] if event['depth'] is not None else '?':>5} "
        f"desired {event['desired']}  {vms}" + (f"  -> {actions}" if actions else "")
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="make demo", description=__doc__)
    parser.add_argument("--vms", type=int, default=3, help="pool size (vm-1..vm-N)")
    parser.add_argument("--base", type=float, default=1.0, help="jobs/s before and after the step")
    parser.add_argument("--peak", type=float, default=25.0, help="jobs/s during the step")
    parser.add_argument("--step-start", type=float, default=20.0)
    parser.add_argument("--step-length", type=float, default=120.0)
    parser.add_argument("--timeout", type=float, default=1200.0, help="give up after this many seconds")
    args = parser.parse_args(argv)
    OUT.mkdir(parents=True, exist_ok=True)
    events_path = OUT / "events.jsonl"
    events_path.unlink(missing_ok=True)
    store = f"sqlite:///{OUT / 'hashes.db'}"
    for stale in OUT.glob("hashes.db*"):
        stale.unlink()
    logs = {name: open(OUT / f"{name}.log", "wb") for name in ("collector", "scaler", "producer")}  # noqa: SIM115
    children: dict[str, subprocess.Popen] = {}

    def start(name: str, command: list[str]) -> subprocess.Popen:
        children[name] = subprocess.Popen(
            command, stdout=logs[name], stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, cwd=ROOT
        )
        return children[name]

    stopping = False

    def stop(*_args) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGTERM, stop)
    start("collector", [str(BIN / "virtscale-collector"), "run", *credentials("collector"), "--store", store])
    start(
        "scaler",
        [
            str(BIN / "virtscale-scaler"),
            "run",
            *credentials("scaler"),
            "--connect",
            "qemu:///system",
            "--pool",
            "vm-*",
            "--min",
            "1",
            "--max",
            str(args.vms),
            "--interval",
            "2",
            "--target-backlog",
            "40",
            "--max-start-per-tick",
            "1",
            "--scale-up-cooldown",
            "25",
            "--scale-down-stabilization",
            "30",
            "--boot-timeout",
            "150",
            "--drain-timeout",
            "60",
            "--events",
            str(events_path),
            "--metrics-port",
            "9477",
            "--shutdown-on-exit",
        ],
    )
    print(f"demo: collector and scaler started (logs in {OUT}); the scaler boots vm-1 first.")
    print("demo: type 'terminate' (or Ctrl-C) to stop everything.\n")
    started = time.time()
    producer_started = False
    last_printed = None
    result = 1
    try:
        while not stopping:
            if time.time() - started > args.timeout:
                print("demo: timed out")
                break
            events = read_events(events_path)
            if events and events[-1]["time"] != last_printed:
                last_printed = events[-1]["time"]
                print(live_line(events[-1], started), flush=True)
            if (
                not producer_started
                and events
                and any(d.get("consuming") for d in events[-1]["domains"].values())
            ):
                start(
                    "producer",
                    [
                        str(BIN / "virtscale-producer"),
                        *credentials("producer"),
                        "--profile",
                        "step",
                        "--base",
                        str(args.base),
                        "--peak",
                        str(args.peak),
                        "--start",
                        str(args.step_start),
                        "--duration",
                        str(args.step_length),
                        "--seed",
                        "1",
                    ],
                )
                producer_started = time.time()
                print(
                    f"demo: producer started: {args.base:g}/s, then {args.peak:g}/s "
                    f"for {args.step_length:g} s, "
                    f"then {args.base:g}/s"
                )
            if producer_started and children["producer"].poll() is not None and events:
                last = events[-1]
                running = [n for n, d in last["domains"].items() if d["state"] == "running"]
                if (
                    last["depth"] == 0
                    and len(running) == 1
                    and any(
                        len([1 for d in e["domains"].values() if d["state"] == "running"]) > 1 for e in events
                    )
                ):
                    print("demo: load served and the pool is back to one VM")
                    result = 0
                    break
            if children["scaler"].poll() is not None:
                print("demo: the scaler exited; see var/demo/scaler.log")
                break
            typed = sys.stdin.isatty() and select.select([sys.stdin], [], [], 0)[0]
            if typed and sys.stdin.readline().strip() == "terminate":
                break
            time.sleep(1)
    finally:
        for name in ("producer", "scaler", "collector"):
            process = children.get(name)
            if process and process.poll() is None:
                process.send_signal(signal.SIGTERM)
                try:
                    process.wait(120)
                except subprocess.TimeoutExpired:
                    process.kill()
    summarize(events_path, store, started)
    return result


def summarize(events_path: Path, store: str, started: float) -> None:
    events = read_events(events_path)
    producer_log = (
        (OUT / "producer.log").read_text(errors="replace") if (OUT / "producer.log").exists() else ""
    )
    produced = next((line for line in producer_log.splitlines() if line.startswith("confirmed ")), "not run")
    stats = subprocess.run(
        [str(BIN / "virtscale-collector"), "stats", "--store", store, *credentials("scaler")],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    print("\n=== summary ===")
    print(f"produced: {produced}")
    if stats.returncode == 0:
        figures = json.loads(stats.stdout)
        print(
            f"stored: {figures['stored']} (duplicates ignored {figures['duplicates_ignored']}), "
            f"dead-lettered: {figures['dead_lettered']}"
        )
        print(f"latency produced -> hashed: {figures['latency_seconds']}")
        print(f"per VM: {figures['per_worker']}")
    print("VM timeline:")
    for event in events:
        for action in event["actions"]:
            print(
                f"  {event['time'] - started:6.0f}s  {action['action']:<8} {action['domain']}  "
                f"({event['reason'][:90]})"
            )
    if events:
        plot_events(events, str(OUT / "demo.png"), "virtscale demo: queue depth, VMs, CPU per VM")
        print(f"plot: {OUT / 'demo.png'}")


if __name__ == "__main__":
    sys.exit(main())
