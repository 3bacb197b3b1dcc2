"""The worker's and the collector's command lines as a new user meets them: help with units,
environment variables and examples; a bad input is exit 2 and one line; `stats` on a store
that is not there is exit 1. None of these reach the broker."""

import sqlite3
import subprocess
import sys

import pytest

from tests.conftest import run_module
from virtscale import __version__


def bad_inputs(tmp_path):
    not_sqlite = tmp_path / "notes.txt"
    not_sqlite.write_text("not a database\n" * 100)
    other_app = tmp_path / "other.db"
    with sqlite3.connect(other_app) as db:
        db.execute("CREATE TABLE people (name TEXT)")
    worker, collector = "virtscale.worker", "virtscale.collector"
    return [
        (worker, ["--name", ""], {}, "--name: must be 1-"),
        (worker, ["--name", "x" * 300], {}, "--name: must be 1-"),
        (worker, ["--name", "vm\t1"], {}, "--name: must be 1-"),
        (worker, [], {"VIRTSCALE_WORKER_NAME": ""}, "VIRTSCALE_WORKER_NAME"),
        (worker, ["--concurrency", "5000"], {}, "--concurrency: must be at most 1024"),
        (worker, ["--concurrency", "1000", "--prefetch-per-slot", "100"], {}, "must be at most 65535"),
        (worker, ["--prefetch-per-slot", "0"], {}, "--prefetch-per-slot: must be a whole number above 0"),
        (worker, ["--amqp-url", "amqp://guest:s3cret@host/%2F?heartbeat=often"], {}, "Invalid heartbeat"),
        (collector, ["--flush-interval", "0"], {}, "--flush-interval: must be greater than 0"),
        (collector, ["--flush-interval", "soon"], {}, "--flush-interval: must be a number"),
        (collector, ["--batch", "40000"], {}, "--batch: must be at most 32767"),
        (collector, ["--amqp-url", "amqp://guest:s3cret@host/%2F?colour=blue"], {}, "Unknown URL parameter"),
        (collector, ["run", "--store", "sqlite:////proc/no-such-process/h.db"], {}, "cannot be opened"),
        (collector, ["run", "--store", f"sqlite:///{tmp_path}"], {}, "is a directory"),
        (collector, ["stats", "--store", f"sqlite:///{tmp_path}"], {}, "is a directory"),
        (collector, ["run", "--store", f"sqlite:///{not_sqlite}"], {}, "not a SQLite database"),
        (collector, ["stats", "--store", f"sqlite:///{not_sqlite}"], {}, "not a SQLite database"),
        (collector, ["stats", "--store", f"sqlite:///{other_app}"], {}, "not a virtscale store"),
        (collector, ["count"], {}, "invalid choice: 'count'"),
    ]


def test_every_bad_input_is_exit_2_with_one_line(tmp_path):
    for module, argv, env, message in bad_inputs(tmp_path):
        run = run_module(module, *argv, timeout=60, env=env)
        where = f"{module} {argv} {env}"
        assert run.returncode == 2, f"{where}: {run.stderr}"
        lines = run.stderr.strip().splitlines()
        assert len(lines) == 1, f"{where}: {run.stderr}"
        assert message in lines[0], f"{where}: {lines[0]}"
        assert "s3cret" not in lines[0]
        assert run.stdout == ""


def test_stats_on_a_missing_store_says_so_and_exits_1(tmp_path):
    path = tmp_path / "nothing-here" / "hashes.db"
    run = run_module("virtscale.collector", "stats", "--store", f"sqlite:///{path}", timeout=60)
    assert run.returncode == 1, run.stderr
    [line] = run.stderr.strip().splitlines()
    assert line.startswith(f"virtscale-collector: --store 'sqlite:///{path}': no such file")
    assert "`virtscale-collector run` creates it" in line
    assert not (tmp_path / "nothing-here").exists(), "stats created nothing"


@pytest.mark.parametrize(
    ("module", "metavars", "environment"),
    [
        (
            "virtscale.worker",
            ["--cost N", "--concurrency N", "--prefetch-per-slot JOBS", "--name NAME", "--amqp-url URL"],
            ["VIRTSCALE_WORKER_NAME", "VIRTSCALE_AMQP_URL", "VIRTSCALE_QUEUE", "VIRTSCALE_LOG_LEVEL"],
        ),
        (
            "virtscale.collector",
            ["--store URL", "--batch N", "--flush-interval SECONDS", "--amqp-url URL"],
            ["VIRTSCALE_AMQP_URL", "VIRTSCALE_QUEUE", "VIRTSCALE_LOG_LEVEL"],
        ),
    ],
)
def test_help_shows_units_environment_and_examples(module, metavars, environment):
    run = run_module(module, "--help", timeout=60)
    assert run.returncode == 0, run.stderr
    text = " ".join(run.stdout.split())  # argparse wraps lines
    for metavar in metavars + environment:
        assert metavar in text, metavar
    tail = run.stdout.rstrip().splitlines()
    examples = tail[tail.index("examples:") + 1 :]
    command = module.replace(".", "-")
    assert 2 <= len(examples) <= 3 and all(command in line for line in examples), examples


@pytest.mark.parametrize("module", ["virtscale.worker", "virtscale.collector"])
def test_version(module):
    run = run_module(module, "--version", timeout=60)
    assert run.returncode == 0
    assert run.stdout.strip() == f"{module.replace('.', '-')} {__version__}"


def loaded_modules(statement: str) -> set[str]:
    code = f"{statement}; import sys; print(' '.join(sys.modules))"
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return {name.split(".")[0] for name in run.stdout.split()}


def test_the_worker_imports_nothing_debian_12_lacks():
    """The VM has Debian's python3-pika, python3-bcrypt and python3-tenacity and nothing else."""
    imported = loaded_modules(
        "import virtscale.worker.cli, virtscale.broker, virtscale.config, virtscale.defaults, "
        "virtscale.messages, virtscale.naming"
    )
    beyond = imported - loaded_modules("pass") - set(sys.stdlib_module_names)
    assert beyond <= {"virtscale", "pika", "bcrypt", "tenacity", "_cffi_backend"}, beyond


def test_the_prefetch_is_sized_to_about_a_second_of_work_per_slot():
    from virtscale.worker.consumer import MAX_PREFETCH, sized_prefetch

    assert sized_prefetch(2, 0.001) == 2 * 1000, "cost 4: a millisecond a hash"
    assert sized_prefetch(2, 0.052) == 2 * 19, "cost 10: 52 ms"
    assert sized_prefetch(4, 0.5) == 4 * 2
    assert sized_prefetch(3, 5.0) == 3, "a job longer than a second: still one a slot"
    assert sized_prefetch(64, 0.0) == MAX_PREFETCH, "within AMQP's 16 bits"


def test_prefetch_per_slot_takes_auto_or_a_number():
    from virtscale.worker.cli import build_parser

    assert build_parser().parse_args([]).prefetch_per_slot is None
    assert build_parser().parse_args(["--prefetch-per-slot", "auto"]).prefetch_per_slot is None
    assert build_parser().parse_args(["--prefetch-per-slot", "3"]).prefetch_per_slot == 3
