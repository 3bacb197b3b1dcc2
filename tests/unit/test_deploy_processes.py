"""deploy/processes.py: how make demo and make chaos stop the processes they started."""

from __future__ import annotations

import subprocess
import sys

from deploy.processes import stop_in_order

#: A child that says it is up, then handles SIGTERM by exiting 0 (or, with "stubborn", ignores it).
CHILD = """
import signal, sys, time
if sys.argv[1] == "stubborn":
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
else:
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
print("up", flush=True)
time.sleep(600)
"""


def child(kind: str) -> subprocess.Popen:
    process = subprocess.Popen([sys.executable, "-c", CHILD, kind], stdout=subprocess.PIPE, text=True)
    assert process.stdout.readline() == "up\n"  # its SIGTERM handler is in place
    return process


def test_each_named_child_is_terminated_and_one_that_hangs_is_killed():
    children = {"polite": child("polite"), "stubborn": child("stubborn"), "unnamed": child("polite")}
    try:
        stop_in_order(children, ("polite", "stubborn", "absent"), timeout=1.0)
        assert children["polite"].returncode == 0, "stopped by SIGTERM"
        assert children["stubborn"].returncode == -9, "killed once SIGTERM did not stop it"
        assert children["unnamed"].poll() is None, "only the named ones are stopped"
    finally:
        for process in children.values():
            process.kill()
            process.wait()
            process.stdout.close()
