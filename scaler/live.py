"""The live view of `virtscale-scaler run` in a terminal: the last tick's queue, domains and
decision, redrawn in place on the alternate screen, with the latest log lines above it.

``render`` is a pure function of a TickReport (and the log lines to show), so what an operator
sees can be tested without a terminal; ``LiveView`` puts it on the screen.

On the alternate screen rich redraws from the top-left corner, so a line printed past the view
would be painted over by the next redraw: log records are kept and drawn as part of the view
instead, and the most recent ones are written to the normal log handlers when the view closes.
"""

from __future__ import annotations

import collections
import logging
import time
import urllib.parse
from collections.abc import Iterable

from rich import box
from rich.console import Console, ConsoleOptions, Group, RenderableType, RenderResult
from rich.live import Live
from rich.rule import Rule
from rich.segment import Segment
from rich.table import Table
from rich.text import Text

from virtscale.config import scrub_licenses
from virtscale.scaler.loop import TickReport
from virtscale.scaler.policy import UNKNOWN

#: Log lines shown above the status: enough for the last few ticks' decisions and a warning.
LOG_LINES = 6

#: Lines the decision may take before it is cut: the reason's start says what the policy saw,
#: its end what it wants and why; the whole reason is also in the log line of the tick.
DECISION_LINES = 3

#: Problems listed one per line; any more are counted.
PROBLEM_LINES = 3

#: Log records written to the normal log handlers when the view closes (the screen they were
#: shown on is gone by then).
REPLAY_RECORDS = 200

STOP_HINT = "type 'terminate' and Enter, or press Ctrl-C, to stop"


def render(report: TickReport, *, dry_run: bool, log_lines: Iterable[str] = ()) -> RenderableType:
    """The view of one tick; every line fits the console's width (long ones are cut or folded)."""
    return Group(
        *_log_pane(log_lines),
        _heading(report.time, dry_run, _leadership(report, dry_run)),
        _queue_line(report),
        *(
            [Text("hosts: " + host_counts(report), no_wrap=True, overflow="ellipsis")]
            if len(report.hosts) > 1
            else []
        ),
        _domain_table(report),
        _decision(report, dry_run),
        *_problem_lines(report.problems + report.failed_actions),
        Text(STOP_HINT, style="dim", no_wrap=True, overflow="ellipsis"),
    )


def render_waiting(
    *, dry_run: bool, log_lines: Iterable[str] = (), now: float | None = None
) -> RenderableType:
    """The view before the first tick has finished."""
    return Group(
        *_log_pane(log_lines),
        _heading(time.time() if now is None else now, dry_run),
        Text("waiting for the first tick...", no_wrap=True, overflow="ellipsis"),
        Text(STOP_HINT, style="dim", no_wrap=True, overflow="ellipsis"),
    )


def _log_pane(log_lines: Iterable[str]) -> list[Text]:
    return [Text(line, style="dim", no_wrap=True, overflow="ellipsis") for line in log_lines]


def _heading(when: float, dry_run: bool, leadership: Text | None = None) -> Rule:
    title = Text()
    if dry_run:
        # First in the title, so a narrow terminal cuts anything but this.
        title.append(" DRY RUN: nothing is changed ", style="bold white on red")
        title.append("  ")
    elif leadership is not None:
        title.append_text(leadership)
        title.append("  ")
    title.append("virtscale-scaler run", style="bold")
    title.append("  " + time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(when)))
    return Rule(title, align="left")


def _leadership(report: TickReport, dry_run: bool) -> Text | None:
    """Who leads the pool: this scaler, or (on a standby) the holder of the lease."""
    if dry_run:
        return None
    if report.leader:
        return Text(" LEADER ", style="bold white on green")
    holder = report.lease_holder
    leads = f"{holder} leads" if holder else "no scaler leads" if holder == "" else "leader not known"
    return Text(f" STANDBY: {leads} ", style="bold black on yellow")


def _queue_line(report: TickReport) -> Text:
    reading = report.reading
    line = Text(no_wrap=True, overflow="ellipsis")
    if report.degraded:
        line.append("DEGRADED ", style="bold yellow")
    line.append(
        f"queue: depth {fmt(reading.depth)} (ready {fmt(reading.ready)}, "
        f"unacked {fmt(reading.unacked)}), in {fmt(reading.publish_rate, '.1f')}/s, "
        f"acked {fmt(reading.ack_rate, '.1f')}/s, consumers {fmt(reading.consumers)}"
    )
    return line


def _domain_table(report: TickReport) -> Table:
    return domain_table(report.domains(), report.decision.signals.get("booting_vms") or ())


def domain_table(domains: dict[str, dict], booting_vms: Iterable[str] = ()) -> Table:
    """One row per domain of a tick's ``domains`` map (TickReport.domains(), or an event's
    "domains"): a running domain the decision counts as booting shows as booting, a reading
    that is missing as "?"."""
    table = Table(box=box.SIMPLE_HEAD, pad_edge=False, show_edge=False)
    table.add_column("domain", no_wrap=True, overflow="ellipsis", max_width=32)
    table.add_column("state", no_wrap=True, overflow="ellipsis")
    table.add_column("cpu%", justify="right", no_wrap=True)
    table.add_column("consuming", no_wrap=True)
    hosts = host_labels(domains)
    if len(hosts) > 1:
        table.add_column("host", no_wrap=True, overflow="ellipsis", max_width=24)
    booting = frozenset(booting_vms)
    for name, domain in sorted(domains.items()):
        state = domain.get("state", UNKNOWN)
        if state == "running" and name in booting:
            state = "booting"  # what the policy counts it as: started, not consuming yet
        row = [name, state, fmt(domain.get("cpu"), ".1f"), yes_no(domain.get("consuming"))]
        table.add_row(*row, *([hosts.get(domain.get("host"), "?")] if len(hosts) > 1 else []))
    return table


def host_labels(domains: dict[str, dict]) -> dict[str, str]:
    """A short label for each host URI of the domains (see host_label)."""
    return {uri: host_label(uri) for uri in {d.get("host") for d in domains.values()} if uri}


def host_label(uri: str) -> str:
    """The URI's host and path; a local session daemon by its user (its socket URI is long)."""
    parts = urllib.parse.urlsplit(uri)
    socket = urllib.parse.parse_qs(parts.query).get("socket", [""])[0]
    if socket.startswith("/run/user/"):
        return f"session of uid {socket.split('/')[3]}"
    return f"{parts.hostname}{parts.path}" if parts.hostname else uri


def host_counts(report: TickReport) -> str:
    """Pool VMs per host, e.g. "qemu:///system 2 running; session 1001 1 running"."""
    parts = []
    for uri, host in report.hosts.items():
        label = host_label(uri)
        if not host["reachable"]:
            parts.append(f"{label}: unreachable")
            continue
        states = ", ".join(f"{count} {state}" for state, count in sorted(host["domains"].items())) or "none"
        cap = f" (cap {host['cap']})" if host.get("cap") else ""
        parts.append(f"{label}: {states}{cap}")
    return "; ".join(parts)


def _decision(report: TickReport, dry_run: bool) -> RenderableType:
    decision = report.decision
    text = Text.assemble(("decision: ", "bold"), decision.reason)
    if decision.actions:
        done = " (dry run: not taken)" if dry_run else ""
        text.append(
            "; actions: " + ", ".join(f"{a.action} {a.domain}" for a in decision.actions) + done,
            style="bold",
        )
    return Clamped(text, DECISION_LINES)


def _problem_lines(problems: list[str]) -> list[Text]:
    lines = [
        Text(f"problem: {problem}", style="yellow", no_wrap=True, overflow="ellipsis")
        for problem in problems[:PROBLEM_LINES]
    ]
    if len(problems) > PROBLEM_LINES:
        lines.append(Text(f"... and {len(problems) - PROBLEM_LINES} more problems (see the log)"))
    return lines


def yes_no(flag: bool | None) -> str:
    """Whether a domain consumes, for display: ``?`` when the consumer list was not read."""
    return "?" if flag is None else "yes" if flag else "no"


def fmt(value, spec: str = "") -> str:
    """A reading for display: ``?`` where it is missing (never 0)."""
    return "?" if value is None else format(value, spec)


class Clamped:
    """Text folded at the console's width into at most ``lines`` lines, the last one ending in
    an ellipsis when the text goes on: a long line neither wraps without end nor is cut short."""

    def __init__(self, text: Text, lines: int):
        self.text = text
        self.lines = lines

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        width = options.max_width
        wrapped = self.text.wrap(console, width, overflow="fold")
        if len(wrapped) > self.lines:
            wrapped = wrapped[: self.lines]
            last = wrapped[-1]
            last.rstrip()
            last.truncate(width - 1)
            last.append("…")
        for line in wrapped:
            yield from line.render(console)
            yield Segment.line()


class LiveView:
    """`run`'s screen in a terminal, as a context manager: the alternate screen while it is open,
    the terminal as it was afterwards; log records are drawn in the view while it is open."""

    def __init__(self, *, dry_run: bool, console: Console | None = None):
        self.dry_run = dry_run
        self.console = console or Console()
        self._report: TickReport | None = None
        self._lines: collections.deque[str] = collections.deque(maxlen=LOG_LINES)
        self._records: collections.deque[logging.LogRecord] = collections.deque(maxlen=REPLAY_RECORDS)
        self._handler = _ViewHandler(self)
        self._saved_handlers: list[logging.Handler] = []
        self._live = Live(console=self.console, screen=True, auto_refresh=False)

    def __enter__(self) -> LiveView:
        root = logging.getLogger()
        self._saved_handlers = root.handlers[:]
        root.handlers[:] = [self._handler]
        self._live.start()
        self._redraw()
        return self

    def __exit__(self, *_exc) -> None:
        self._live.stop()
        logging.getLogger().handlers[:] = self._saved_handlers
        for record in self._records:
            for handler in self._saved_handlers:
                if record.levelno >= handler.level:
                    handler.handle(record)

    def show(self, report: TickReport) -> None:
        """Draw a new tick."""
        self._report = report
        self._redraw()

    def note(self, text: str) -> None:
        """A line of its own above the status (the console's hint, a log line)."""
        self._lines.append(scrub_licenses(text))
        self._redraw()

    def keep(self, record: logging.LogRecord) -> None:
        self._records.append(record)

    def _redraw(self) -> None:
        if self._report is None:
            view = render_waiting(dry_run=self.dry_run, log_lines=list(self._lines))
        else:
            view = render(self._report, dry_run=self.dry_run, log_lines=list(self._lines))
        self._live.update(view, refresh=True)


class _ViewHandler(logging.Handler):
    """Log records into the view: the first line of each, scrubbed, with time, level and logger."""

    def __init__(self, view: LiveView):
        super().__init__()
        self.view = view
        self.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s", "%H:%M:%S"))

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self.view.keep(record)
            summary = logging.makeLogRecord({**record.__dict__, "exc_info": None, "exc_text": None})
            self.view.note(self.format(summary).splitlines()[0])
        except Exception:  # logging's own contract: a handler reports its failure, never raises
            self.handleError(record)
