"""make chaos: the real system on real VMs under a load profile and a schedule of faults, then a
report (var/chaos/report.json, var/chaos/timeline.png). Exits 0 only if no confirmed job was
lost, none was stored twice, and the scaler took no action on a degraded reading.

Everything runs apart from the machine's main broker: a RabbitMQ node of its own (AMQP 5690,
management 15690, restarted as a fault), the queue `chaos`, the domains chaos-1..N plus one
broken guest chaos-0bad-1 (its worker's password is wrong), first in the scaler's start order, so
that the scaler has to boot-timeout it, mark it failed and start another. Every component reaches the broker
through a cuttable proxy of its own, the guests at 10.0.2.2:<proxy port>, the scaler's management
API through one too. Ctrl-C stops everything and removes the domains.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
sys.path[:0] = [str(ROOT), str(HERE)]

import faults  # noqa: E402
import report  # noqa: E402
from timeline import plot_timeline  # noqa: E402

from deploy.processes import stop_in_order  # noqa: E402
from deploy.rabbitmq.node import RabbitNode  # noqa: E402
from tests.support.proxy import CuttableProxy  # noqa: E402

BIN = ROOT / ".venv" / "bin"
OUT = ROOT / "var" / "chaos"
URI = "qemu:///system"
QUEUE = "chaos"
#: The broken guest's name sorts before chaos-1 (the scaler starts the lowest-numbered first), so
#: the scaler's first start is the guest whose worker never consumes.
PREFIX, BROKEN_PREFIX = "chaos-", "chaos-0bad-"
POOL = "chaos"
BROKEN = f"{BROKEN_PREFIX}1"
#: Seconds between two health samples.
SAMPLE_INTERVAL = 2.0
#: The scaler's tick (seconds); its events are stale after three missed ticks.
TICK = 2.0
PROXIES = ("producer", "collector", "scaler-amqp", "workers", "management")
#: Seconds a component has to stop after SIGTERM before it is killed (the domains are undefined
#: right after, so the scaler need not finish shutting them down).
STOP_TIMEOUT = 30.0


def scaler_flags(args: argparse.Namespace) -> list[str]:
    return [
        "--connect", URI, "--pool", POOL, "--queue", QUEUE,
        "--min", "1", "--max", str(args.vms + 1),
        "--interval", str(TICK), "--window", "20",
        "--slo", str(args.slo),
        "--scale-up-cooldown", "20", "--scale-down-stabilization", "60",
        "--boot-timeout", str(args.boot_timeout), "--drain-timeout", "60",
    ]  # fmt: skip


def vms_command(command: str, *extra: str) -> list[str]:
    return [str(BIN / "python"), str(ROOT / "deploy" / "vms.py"), command, "--connect", URI, *extra]


def virsh(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["virsh", "-c", URI, *args], capture_output=True, text=True, timeout=60)


def say(text: str) -> None:
    print(f"chaos: {text}", flush=True)


class Harness:
    """The chaos node, the proxies, the components and the VMs; the faults act on it through
    the methods faults.System names."""

    def __init__(self, args: argparse.Namespace):
        self.args = args
        self.node = RabbitNode(OUT / "rabbitmq", "virtscale-chaos@localhost", 5690, 15690)
        self.proxies: dict[str, CuttableProxy] = {}
        self.children: dict[str, subprocess.Popen] = {}
        self.stopping = threading.Event()
        self.started = time.time()
        self.fault_log: list[dict] = []
        self.events_path = OUT / "events.jsonl"
        self.samples_path = OUT / "health.jsonl"
        self.store_path = OUT / "hashes.db"

    # -- set-up -----------------------------------------------------------------------------------

    def set_up(self) -> None:
        OUT.mkdir(parents=True, exist_ok=True)
        for stale in [*OUT.glob("*.jsonl"), *OUT.glob("*.log"), *OUT.glob("hashes.db*")]:
            stale.unlink()
        self.node.prepare()
        node = self.node
        say(f"starting RabbitMQ node {node.name} (AMQP {node.amqp_port}, management {node.management_port})")
        self.node.start()
        subprocess.run(
            [str(BIN / "virtscale-broker"), "declare", "--amqp-url", node.amqp_url,
             "--management-url", node.management_url, "--queue", QUEUE],
            check=True,
            capture_output=True,
        )  # fmt: skip
        for name in PROXIES:
            port = self.node.management_port if name == "management" else self.node.amqp_port
            self.proxies[name] = CuttableProxy(("127.0.0.1", port))
        self.define_vms()

    def define_vms(self) -> None:
        secret, wrong = OUT / "guest-password", OUT / "wrong-password"
        secret.write_text("guest\n")
        wrong.write_text("not-the-password\n")
        common = [
            "--pool",
            POOL,
            "--queue",
            QUEUE,
            "--cost",
            str(self.args.cost),
            "--user",
            "guest",
            "--shared-user",
        ]
        common += ["--broker-port", str(self.proxies["workers"].port), "--domain-type", self.args.domain_type]
        subprocess.run(vms_command("undefine", "--pool", POOL), capture_output=True, check=False)
        for prefix, count, password in ((PREFIX, self.args.vms, secret), (BROKEN_PREFIX, 1, wrong)):
            template = OUT / f"template-{prefix.strip('-')}.json"
            make = [str(BIN / "python"), str(ROOT / "deploy" / "template.py"), *common]
            subprocess.run([*make, "--password-file", str(password), "--out", str(template)], check=True)
            define = vms_command(
                "define", "--template", str(template), "--prefix", prefix, "--count", str(count)
            )
            subprocess.run(define, check=True)

    def amqp_url(self, proxy: str) -> str:
        return f"amqp://guest:guest@127.0.0.1:{self.proxies[proxy].port}/%2F"

    def command(self, component: str) -> list[str]:
        if component == "collector":
            store = ["--store", f"sqlite:///{self.store_path}"]
            return [
                str(BIN / "virtscale-collector"),
                "run",
                "--amqp-url",
                self.amqp_url("collector"),
                "--queue",
                QUEUE,
                *store,
            ]
        if component == "scaler":
            management = f"http://127.0.0.1:{self.proxies['management'].port}"
            return [
                str(BIN / "virtscale-scaler"), "run", "--amqp-url", self.amqp_url("scaler-amqp"),
                "--management-url", management, *scaler_flags(self.args), "--events", str(self.events_path),
            ]  # fmt: skip
        args = self.args
        return [
            str(BIN / "virtscale-producer"), "--amqp-url", self.amqp_url("producer"), "--queue", QUEUE,
            "--profile", "sine", "--base", str(args.base), "--peak", str(args.peak),
            "--period", str(args.period), "--run-for", str(args.duration), "--seed", "7",
        ]  # fmt: skip

    # -- what the faults act on (faults.System) ---------------------------------------------------

    def start_component(self, component: str) -> None:
        with open(OUT / f"{component}.log", "ab") as log:  # the child keeps its own copy of the file
            self.children[component] = subprocess.Popen(
                self.command(component),
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                cwd=ROOT,
            )

    def kill(self, component: str) -> None:
        process = self.children[component]
        os.kill(process.pid, signal.SIGKILL)
        process.wait()

    def cut(self, proxy: str) -> None:
        self.proxies[proxy].cut()

    def restore(self, proxy: str) -> None:
        self.proxies[proxy].restore()

    def restart_rabbitmq(self) -> None:
        self.node.restart()

    def restart_libvirtd(self) -> None:
        """SIGTERM to libvirtd (by its pid), then `libvirtd -d`; running guests survive it."""
        found = subprocess.run(["pgrep", "-x", "libvirtd"], capture_output=True, text=True).stdout.split()
        for pid in map(int, found):
            os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + 30
        while subprocess.run(["pgrep", "-x", "libvirtd"], capture_output=True).returncode == 0:
            if time.monotonic() > deadline:
                raise RuntimeError("libvirtd did not stop within 30 s")
            time.sleep(0.2)
        subprocess.run(["libvirtd", "-d"], check=True)
        while virsh("version").returncode != 0:
            if time.monotonic() > deadline + 60:
                raise RuntimeError("libvirtd did not answer within 60 s of its start")
            time.sleep(0.5)

    def destroy_busy_vm(self) -> str:
        events = read_jsonl(self.events_path)
        busy = (
            [n for n, d in events[-1]["domains"].items() if d.get("consuming") and n != BROKEN]
            if events
            else []
        )
        if not busy:
            raise RuntimeError("no consuming VM to destroy")
        victim = max(busy, key=lambda name: int(name.removeprefix(PREFIX)))
        virsh("destroy", victim).check_returncode()
        return victim

    def start_broken_guest(self) -> str:
        virsh("start", BROKEN).check_returncode()
        return BROKEN

    # -- watching ---------------------------------------------------------------------------------

    def sample(self) -> dict:
        """What the broker says right now (read directly, never through a proxy)."""
        jobs, results = self.node.queue(QUEUE), self.node.queue(f"{QUEUE}.hashed")
        names = self.node.connection_names()
        producer = self.children.get("producer")
        sample = {
            "time": time.time(),
            "management_ok": None not in (jobs, results, names),
            "job_consumers": jobs and jobs.get("consumers"),
            "job_messages": jobs and jobs.get("messages"),
            "result_consumers": results and results.get("consumers"),
            "result_messages": results and results.get("messages"),
            "producer_running": producer is not None and producer.poll() is None,
            "producer_connected": any(name.startswith("virtscale-producer") for name in names or []),
        }
        with open(self.samples_path, "a") as handle:
            handle.write(json.dumps(sample) + "\n")
        return sample

    # -- the run ----------------------------------------------------------------------------------

    def wait(self, until, timeout: float, what: str) -> bool:
        """Sample every SAMPLE_INTERVAL until ``until(sample)``; False on timeout or Ctrl-C."""
        deadline = time.monotonic() + timeout
        while not self.stopping.is_set():
            if until(self.sample()):
                return True
            if time.monotonic() > deadline:
                say(f"gave up waiting for {what} after {timeout:g} s")
                return False
            self.stopping.wait(SAMPLE_INTERVAL)
        return False

    def start_system(self) -> bool:
        self.start_component("collector")
        # A new queue has no statistics for its first seconds; the scaler starts once it has, so
        # that its first ticks are not degraded by the harness's own start-up.
        self.wait(lambda _s: self.node.queue(QUEUE) is not None, 60, "the job queue's statistics")
        self.started = time.time()
        self.start_component("scaler")
        self.log_fault(
            {
                "kind": "bad-guest",
                "start": self.started,
                "end": self.started,
                "detail": f"{BROKEN} first to start, wrong password",
                "domain": BROKEN,
            }
        )
        say(f"collector and scaler started (logs in {OUT}); waiting for a VM to consume")
        timeout = self.args.boot_timeout + 300  # the broken guest's boot timeout, then a good boot
        return self.wait(lambda s: (s["job_consumers"] or 0) >= 1, timeout, "a consuming VM")

    def log_fault(self, entry: dict) -> None:
        self.fault_log.append(entry)
        with open(OUT / "faults.jsonl", "a") as handle:
            handle.write(json.dumps(entry) + "\n")

    def run_faults(self, load_started: float) -> None:
        kinds = tuple(self.args.faults.split(",")) if self.args.faults else faults.KINDS
        for planned in faults.schedule(self.args.duration, kinds):
            if self.stopping.wait(max(load_started + planned.at - time.time(), 0)):
                return
            say(f"fault {planned.kind} at +{time.time() - load_started:.0f} s of load")
            entry = faults.inject(planned.kind, self)
            self.log_fault(entry)
            say(f"fault {planned.kind} over after {entry['end'] - entry['start']:.0f} s: {entry['detail']}")

    def run_load(self) -> None:
        """The producer for --duration seconds, the faults on their schedule meanwhile."""
        args = self.args
        self.start_component("producer")
        load_started = time.time()
        profile = f"sine {args.base:g}..{args.peak:g} jobs/s, period {args.period:g} s"
        say(f"producer started: {profile}, for {args.duration:g} s")
        injector = threading.Thread(target=self.run_faults, args=(load_started,), daemon=True)
        injector.start()
        producer = self.children["producer"]
        self.wait(lambda _s: producer.poll() is not None, args.duration + 180, "the producer to finish")
        if producer.poll() is None:
            producer.send_signal(signal.SIGTERM)
        injector.join()

    def drain(self) -> bool:
        """Wait (bounded) until both queues stay empty for three samples in a row."""
        say("load over; waiting for the queues to drain")
        empty = 0

        def drained(sample: dict) -> bool:
            nonlocal empty
            quiet = sample["management_ok"] and sample["job_messages"] == 0 and sample["result_messages"] == 0
            empty = empty + 1 if quiet else 0
            return empty >= 3

        return self.wait(drained, self.args.drain_wait, "the queues to drain")

    def collector_stats(self) -> dict | None:
        stats = subprocess.run(
            [str(BIN / "virtscale-collector"), "stats", "--store", f"sqlite:///{self.store_path}",
             "--amqp-url", self.node.amqp_url, "--queue", QUEUE],
            capture_output=True, text=True,
        )  # fmt: skip
        return json.loads(stats.stdout) if stats.returncode == 0 else None

    def tear_down(self) -> None:
        """Every process we started, the proxies, the domains and the chaos node; each step runs
        even if one before it failed."""
        stop_in_order(self.children, ("producer", "scaler", "collector"), STOP_TIMEOUT)
        for proxy in self.proxies.values():
            proxy.close()
        subprocess.run(vms_command("undefine", "--pool", POOL), capture_output=True, check=False)
        if self.node.running():
            self.node.stop()
        say("everything stopped, chaos domains removed, chaos node stopped")


def read_jsonl(path: Path) -> list[dict]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def store_rows(path: Path) -> tuple[list[tuple[float, float]], int]:
    """(produced_at, hashed_at) of every row, and the number of distinct ids."""
    if not path.exists():
        return [], 0
    with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as db:
        rows = db.execute("SELECT produced_at, hashed_at FROM hashes").fetchall()
        distinct = db.execute("SELECT COUNT(DISTINCT id) FROM hashes").fetchone()[0]
    return rows, distinct


def write_report(harness: Harness, stats: dict | None, drained: bool) -> dict:
    rows, distinct = store_rows(harness.store_path)
    producer_log = OUT / "producer.log"
    record = report.RunRecord(
        started=harness.started,
        events=read_jsonl(harness.events_path),
        samples=read_jsonl(harness.samples_path),
        faults=harness.fault_log,
        rows=rows,
        distinct_ids=distinct,
        stats=stats,
        producer_log=producer_log.read_text(errors="replace") if producer_log.exists() else "",
        slo=harness.args.slo,
        drained=drained,
    )
    rules = report.WholeRules(
        stale_after=3 * TICK + 4, boot_grace=harness.args.boot_timeout, broken=frozenset({BROKEN})
    )
    result = report.build_report(record, rules)
    (OUT / "report.json").write_text(json.dumps(result, indent=2) + "\n")
    print("\n".join(report.summary_lines(result)))
    if record.events:
        title = f"make chaos: {len(record.faults)} faults, {harness.args.duration:g} s of load"
        plot_timeline(record.events, record.faults, harness.started, str(OUT / "timeline.png"), title)
    say(f"report: {OUT / 'report.json'}, timeline: {OUT / 'timeline.png'}")
    return result


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="make chaos", description=__doc__)
    parser.add_argument("--duration", type=float, default=600.0, help="seconds of load (default 600)")
    parser.add_argument("--vms", type=int, default=3, help="working domains chaos-1..N (default 3)")
    parser.add_argument("--cost", type=int, default=8, help="bcrypt cost in the guests (default 8)")
    parser.add_argument("--base", type=float, default=2.0, help="jobs/s at the sine's low (default 2)")
    parser.add_argument("--peak", type=float, default=12.0, help="jobs/s at the sine's high (default 12)")
    parser.add_argument("--period", type=float, default=300.0, help="seconds per sine cycle (default 300)")
    parser.add_argument("--slo", type=float, default=60.0, help="seconds a job may wait (default 60)")
    parser.add_argument(
        "--boot-timeout",
        type=float,
        default=120.0,
        help="the scaler's; a loaded TCG host boots a guest in 30-90 s",
    )
    parser.add_argument(
        "--drain-wait", type=float, default=300.0, help="seconds to wait for the queues to drain"
    )
    parser.add_argument(
        "--faults",
        default="",
        help=f"comma-separated subset, in order (default all: {','.join(faults.KINDS)})",
    )
    parser.add_argument("--domain-type", default="auto", choices=["auto", "kvm", "qemu"])
    args = parser.parse_args(argv)
    unknown = set(filter(None, args.faults.split(","))) - set(faults.KINDS)
    if unknown:
        parser.error(f"unknown fault(s): {', '.join(sorted(unknown))}")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if os.geteuid() != 0:
        sys.exit("make chaos: run as root (it starts a RabbitMQ node and restarts libvirtd)")
    harness = Harness(args)
    signal.signal(signal.SIGINT, lambda *_: harness.stopping.set())
    signal.signal(signal.SIGTERM, lambda *_: harness.stopping.set())
    stats, drained = None, False
    try:
        harness.set_up()
        if harness.start_system():
            harness.run_load()
            drained = harness.drain()
        stats = harness.collector_stats()
    finally:
        harness.tear_down()
    result = write_report(harness, stats, drained)
    return 0 if result["passed"] and not harness.stopping.is_set() else 1


if __name__ == "__main__":
    sys.exit(main())
