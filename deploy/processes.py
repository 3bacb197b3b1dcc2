"""The child processes of a deploy/ script (make demo, make chaos), stopped the one way both need."""

from __future__ import annotations

import signal
import subprocess
from collections.abc import Iterable


def stop_in_order(children: dict[str, subprocess.Popen], names: Iterable[str], timeout: float) -> None:
    """SIGTERM each named child still running, in order, and wait up to ``timeout`` seconds for
    it to finish its own shutdown (the scaler's shuts the VMs down); kill it if it hangs."""
    for name in names:
        process = children.get(name)
        if process and process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
