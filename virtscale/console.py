"""The terminal console of a long-running command: `terminate` stops it, other lines go to the
command (the producer takes a number of seconds between publishes), anything else gets a hint.

Typed input is the least trusted input there is: a line that is not understood, bytes that are
not UTF-8 or a closed stdin never raise; the worst they do is print the hint or end the console.
"""

from __future__ import annotations

import logging
import sys
import threading
from collections.abc import Callable, Iterator
from typing import IO

log = logging.getLogger(__name__)

#: The one word every console understands.
TERMINATE = "terminate"


def read_console(
    stop: Callable[[], None],
    hint: str,
    handle: Callable[[str], bool] | None = None,
    say: Callable[[str], None] | None = None,
    stream: IO | None = None,
) -> None:
    """Read lines until `terminate` (then call ``stop``) or the end of input.

    ``handle`` gets every other non-empty line and returns whether it understood it; a line it
    did not (or every line, without a handler) makes ``say`` print ``hint`` once.
    """
    say = say or _to_stderr
    for line in _lines(sys.stdin if stream is None else stream):
        command = line.strip()
        if not command:
            continue
        if command == TERMINATE:
            stop()
            return
        if handle is None or not handle(command):
            say(hint)


def start_console(
    stop: Callable[[], None],
    hint: str,
    handle: Callable[[str], bool] | None = None,
    say: Callable[[str], None] | None = None,
) -> threading.Thread:
    """``read_console`` on stdin in a daemon thread, so a blocked read never holds up the exit."""
    thread = threading.Thread(
        target=read_console, args=(stop, hint, handle, say), name="console", daemon=True
    )
    thread.start()
    return thread


def _lines(stream: IO) -> Iterator[str]:
    """Lines of ``stream`` as text; undecodable bytes become U+FFFD instead of an exception."""
    try:
        for raw in getattr(stream, "buffer", stream):
            yield raw.decode("utf-8", errors="replace") if isinstance(raw, bytes) else raw
    except (OSError, ValueError) as exc:  # stdin closed or gone: the console just ends
        log.debug("console input ended: %s", exc)


def _to_stderr(text: str) -> None:
    print(text, file=sys.stderr, flush=True)
