"""make mutate and make coverage: how well the tests guard the modules where a bug loses or leaks
data or wrongly starts or stops VMs.

`mutate` runs mutmut over those modules (setup.cfg's [mutmut] section names them and the tests)
and ends with one line, ``mutation score: K/N killed (P%)``; the surviving mutants that no test
could kill because they change nothing observable are listed, each with its reason, in
tests/mutation/equivalent.txt and do not count. `coverage` measures the branch coverage of the
same modules under the same tests.

mutmut names a mutant after the path of its file, while the components live in folders of their
own and import as virtscale.<component> (setup.cfg's package_dir). So both run on a copy laid out
as installed, var/mutate/virtscale/{worker,collector,producer,scaler}, with the tests beside it:
there a file's path is its module's name, and the copy comes first on the import path.
"""

from __future__ import annotations

import argparse
import configparser
import fnmatch
import json
import os
import shutil
import subprocess
import sys
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
#: Where the copy is laid out and mutmut keeps its mutants (mutants/) and results.
WORK = ROOT / "var" / "mutate"
EQUIVALENT = Path(__file__).with_name("equivalent.txt")

#: Each component's folder and where it goes in the copy.
LAYOUT = {
    "virtscale": "virtscale",
    "worker": "virtscale/worker",
    "collector": "virtscale/collector",
    "producer": "virtscale/producer",
    "scaler": "virtscale/scaler",
}

#: In a module that does more than the job in question, the functions that do it: of
#: virtscale/config.py (command-line plumbing), only the log scrubbing and the URL redaction.
ONLY_FUNCTIONS = {
    "virtscale/config.py": ("scrub_licenses", "redact_url", "_TextFormatter.format", "_JsonFormatter.format"),
    # Of the hypervisor, the actions that start, stop, save, create and delete domains and what
    # they go through: the pool check, the error mapping and the connection they act on. Not the
    # guest agent's commands after a restore (_after_restore, guest_exec): libvirt's test driver
    # has no agent, so only the tests on real VMs (tests/vm) reach them.
    "virtscale/scaler/hypervisor.py": (
        "Hypervisor.start",
        "Hypervisor.stop_worker",
        "Hypervisor.save",
        "Hypervisor.shutdown",
        "Hypervisor.destroy",
        "Hypervisor.delete",
        "Hypervisor.create",
        "Hypervisor._act",
        "Hypervisor._call",
        "Hypervisor._connect",
        "Hypervisor._drop",
        "read_tag",
        "_has_save_image",
        "_alive",
    ),
}

#: Mutants tested at once: the broker tests spend most of their time waiting on the broker, so
#: more of them than there are cores keep the cores busy.
MAX_CHILDREN = 6

#: mutmut's verdicts that count as killed: a test failed, or the tests hung (and were stopped).
KILLED = {"killed", "timeout"}


def mutmut_setting(key: str) -> list[str]:
    parser = configparser.ConfigParser()
    parser.read(ROOT / "setup.cfg")
    return [line.strip() for line in parser.get("mutmut", key).splitlines() if line.strip()]


def lay_out() -> None:
    """A fresh copy of the code as installed, the tests and the configuration, in WORK."""
    shutil.rmtree(WORK, ignore_errors=True)
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    for folder, target in LAYOUT.items():
        shutil.copytree(ROOT / folder, WORK / target, ignore=ignore, dirs_exist_ok=True)
    shutil.copytree(ROOT / "tests", WORK / "tests", ignore=ignore)
    for name in ("setup.cfg", "pyproject.toml"):
        shutil.copy2(ROOT / name, WORK / name)


def mutant_patterns(paths: list[str]) -> list[str]:
    """mutmut's names of the mutants to run: every function of a module, or the listed ones."""
    patterns = []
    for path in paths:
        module = path.removesuffix(".py").replace("/", ".")
        functions = ONLY_FUNCTIONS.get(path)
        if functions is None:
            patterns.append(f"{module}.*")
            continue
        for function in functions:
            cls, _, name = function.rpartition(".")
            mangled = f"xǁ{cls}ǁ{name}" if cls else f"x_{name}"
            patterns.append(f"{module}.{mangled}__mutmut_*")
    return patterns


@dataclass
class Verdicts:
    """mutmut's verdict on each selected mutant, by name, and the module each belongs to."""

    status: dict[str, str]
    module: dict[str, str]


def read_verdicts(paths: list[str], patterns: list[str]) -> Verdicts:
    from mutmut.stats import status_by_exit_code

    status, module = {}, {}
    for path in paths:
        meta = json.loads((WORK / "mutants" / f"{path}.meta").read_text())
        for name, exit_code in meta["exit_code_by_key"].items():
            if any(fnmatch.fnmatchcase(name, pattern) for pattern in patterns):
                status[name] = status_by_exit_code[exit_code]
                module[name] = path
    return Verdicts(status, module)


def mutated_lines(name: str) -> list[str]:
    """The lines a mutant adds, as `mutmut show` prints its diff."""
    shown = subprocess.run(
        [sys.executable, "-m", "mutmut", "show", name], cwd=WORK, capture_output=True, text=True, check=True
    ).stdout
    return [
        line[1:].strip() for line in shown.splitlines() if line.startswith("+") and not line.startswith("+++")
    ]


def equivalent_mutants(survivors: set[str], patterns: list[str]) -> tuple[set[str], list[str]]:
    """The survivors tests/mutation/equivalent.txt excuses, and what is wrong with its entries.

    Each entry is ``NAME | MUTATED LINE | REASON``: mutmut numbers the mutants of a function in
    order, so a change to the function can give the name to another mutant; the mutated line
    must still match for the entry to excuse it."""
    excused, problems = set(), []
    for number, line in enumerate(EQUIVALENT.read_text().splitlines(), 1):
        if not line.strip() or line.startswith("#"):
            continue
        try:
            # The mutated line may hold " | " itself (a type union): the reason never does.
            name, rest = line.split(" | ", 1)
            mutated, reason = (part.strip() for part in rest.rsplit(" | ", 1))
            name = name.strip()
        except ValueError:
            problems.append(f"line {number}: not NAME | MUTATED LINE | REASON")
            continue
        if not any(fnmatch.fnmatchcase(name, pattern) for pattern in patterns):
            continue  # a module left out of only_mutate
        if name not in survivors:
            problems.append(f"line {number}: {name} did not survive (killed, renamed or gone): drop it")
        elif mutated not in mutated_lines(name):
            problems.append(f"line {number}: {name} is now another mutant: check it again")
        elif not reason:
            problems.append(f"line {number}: {name} has no reason")
        else:
            excused.add(name)
    return excused, problems


def report(verdicts: Verdicts, excused: set[str]) -> tuple[int, int]:
    """Per module: mutants, killed, equivalent, and every other verdict; returns (killed, counted)."""
    total_killed = total_counted = 0
    for path in dict.fromkeys(verdicts.module.values()):
        names = [name for name, module in verdicts.module.items() if module == path]
        counts = Counter(verdicts.status[name] for name in names if name not in excused)
        killed = sum(counts[status] for status in KILLED)
        counted = sum(counts.values())
        others = ", ".join(
            f"{count} {status}" for status, count in sorted(counts.items()) if status != "killed"
        )
        print(
            f"  {path}: {killed}/{counted} killed, {len(names) - counted} equivalent"
            + (f" ({others})" if others else "")
        )
        total_killed += killed
        total_counted += counted
    survivors = sorted(
        name for name, status in verdicts.status.items() if status not in KILLED and name not in excused
    )
    if survivors:
        print(f"not killed ({len(survivors)}; `cd {WORK.relative_to(ROOT)} && mutmut show NAME` shows one):")
        for name in survivors:
            print(f"  {name}: {verdicts.status[name]}")
    return total_killed, total_counted


def mutate(args: argparse.Namespace) -> int:
    paths = mutmut_setting("only_mutate")
    patterns = mutant_patterns(paths)
    if not args.reuse:
        lay_out()
    log_path = WORK / "mutmut.log"
    started = time.monotonic()
    print(f"mutmut over {len(paths)} modules; its output goes to {log_path.relative_to(ROOT)}", flush=True)
    with open(log_path, "w") as log_file:
        run = subprocess.run(
            [
                str(Path(sys.executable).with_name("mutmut")),
                "run",
                "--max-children",
                str(MAX_CHILDREN),
                *patterns,
            ],
            cwd=WORK,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            check=False,
        )
    if run.returncode != 0:
        print(f"mutmut failed (exit {run.returncode}); the end of {log_path}:", file=sys.stderr)
        print("\n".join(log_path.read_text(errors="replace").splitlines()[-20:]), file=sys.stderr)
        return 1
    print(f"mutmut ran for {(time.monotonic() - started) / 60:.1f} min")
    return score(args)


def score(_args: argparse.Namespace | None = None) -> int:
    """The score of the mutants mutmut has run in var/mutate, as they stand: after `mutate`, or
    after runs of `mutmut run PATTERN` there, one module at a time (each run redoes only the
    mutants it names)."""
    paths = mutmut_setting("only_mutate")
    patterns = mutant_patterns(paths)
    verdicts = read_verdicts(paths, patterns)
    survivors = {name for name, status in verdicts.status.items() if status not in KILLED}
    excused, problems = equivalent_mutants(survivors, patterns)
    for problem in problems:
        print(f"{EQUIVALENT.relative_to(ROOT)} {problem}")
    killed, counted = report(verdicts, excused)
    print(f"mutation score: {killed}/{counted} killed ({100 * killed / max(counted, 1):.1f}%)")
    return 0


def coverage(args: argparse.Namespace) -> int:
    """Branch coverage of the same modules under the same tests, by pytest-cov."""
    if not args.reuse:
        lay_out()
    paths = mutmut_setting("only_mutate")
    tests = mutmut_setting("pytest_add_cli_args_test_selection")
    command = [
        sys.executable,
        "-m",
        "pytest",
        "-q",
        "-p",
        "no:cacheprovider",
        "--cov",
        "--cov-branch",
        "--cov-report=term-missing:skip-covered",
        *[f"--cov-config={WORK / 'coverage.cfg'}"],
        *tests,
    ]
    (WORK / "coverage.cfg").write_text(
        "[run]\nbranch = True\nsource = virtscale\n[report]\ninclude =\n"
        + "".join(f"    {path}\n" for path in paths)
    )
    return subprocess.run(
        command, cwd=WORK, env={**os.environ, "PYTHONPATH": str(WORK)}, check=False
    ).returncode


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.mutation", description=__doc__)
    parser.add_argument("command", choices=["mutate", "coverage", "score"])
    parser.add_argument(
        "--reuse",
        action="store_true",
        help="keep var/mutate as it is (and mutmut's results for unchanged code)",
    )
    args = parser.parse_args(argv)
    return {"mutate": mutate, "coverage": coverage, "score": score}[args.command](args)


if __name__ == "__main__":
    sys.exit(main())
