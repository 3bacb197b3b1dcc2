"""Properties of the five commands' flag parsing: for any argv, a command parses it or exits with
status 0 (--help, --version) or 2 and one line on stderr, never another exception; and so do the
start-up checks that follow parse_args and touch nothing (no broker, no libvirt, no file written).
"""

from __future__ import annotations

import argparse
import contextlib
import io

from hypothesis import example, given, settings
from hypothesis import strategies as st

from virtscale import topology
from virtscale.cli_support import resolve_and_check_amqp_urls
from virtscale.collector import cli as collector_cli
from virtscale.config import queue_names
from virtscale.producer import cli as producer_cli
from virtscale.scaler import cli as scaler_cli
from virtscale.scaler.commands.pool import queue_monitor
from virtscale.scaler.commands.run import check_flags
from virtscale.scaler.commands.simulate import load_from, world_from
from virtscale.scaler.policy_options import policy_config
from virtscale.worker import cli as worker_cli

#: Reproducible in CI (derandomize), no example database written into the tree, no timing.
PROPERTY = settings(max_examples=200, deadline=None, derandomize=True, database=None)

PARSERS = {
    "virtscale-worker": worker_cli.build_parser,
    "virtscale-producer": producer_cli.build_parser,
    "virtscale-collector": collector_cli.build_parser,
    "virtscale-scaler": scaler_cli.build_parser,
    "virtscale-broker": topology.build_parser,
}


def words_of(parser: argparse.ArgumentParser) -> set[str]:
    """Every flag and command name the parser (and its subcommands) knows."""
    words = set()
    for action in parser._actions:
        words.update(action.option_strings)
        if isinstance(action.choices, dict):  # subcommands
            for name, subparser in action.choices.items():
                words.add(name)
                words.update(words_of(subparser))
        elif action.choices:
            words.update(str(choice) for choice in action.choices)
    return words


#: Values that are on the edge of some flag's rule, or break it.
VALUES = [
    *("0", "1", "-1", "2.5", "1e309", "nan", "inf", "-inf", "65536", "99999999999999999999"),
    *("", " ", "x", "--", "-", "a\nb", "licenses", "DEBUG", "json", "/nonexistent/file"),
    *("amqp://u:p@h:5672/%2F", "amqp://h:0/", "amqp://h:99999/", "amqp://[", "amqp://", "ftp://h"),
    *("http://h:15672", "http://[x", "https://", "http://h:0", "sqlite:///", "sqlite:////tmp/x.db"),
    *("amqp://u:p@[::1/", "http://[::1/", "1e10", "1e-9", "1e12", "100000000", "/proc/version"),
]
values = st.one_of(
    st.sampled_from(VALUES),
    st.text(max_size=12),
    st.text(max_size=20).map(lambda query: "amqp://h/%2F?" + query),
)


def argvs(words: set[str]) -> st.SearchStrategy[list[str]]:
    """Lists of the command's own words, --flag=value pairs and values, in any order."""
    flags = sorted(word for word in words if word.startswith("-"))
    token = st.one_of(
        st.sampled_from(sorted(words)),
        values,
        st.builds("{}={}".format, st.sampled_from(flags), values),
    )
    return st.lists(token, max_size=8)


def quietly(call):
    """(SystemExit code or None, what ``call`` returned, stdout, stderr)."""
    out, err = io.StringIO(), io.StringIO()
    code = result = None
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            result = call()
        except SystemExit as exc:
            code = exc.code
    return code, result, out.getvalue(), err.getvalue()


def check_outcome(command: str, code, out: str, err: str) -> None:
    """Parsed and silent; or help or version on stdout, exit 0; or one error line, exit 2."""
    if code is None:
        assert (out, err) == ("", "")
    elif code == 0:
        assert out and not err
    else:
        assert code == 2, f"exit status {code!r}"
        assert err.startswith(f"{command}") and ": error: " in err, err
        assert err.endswith("\n") and err.count("\n") == 1 and "\r" not in err, repr(err)


def check_values(args: argparse.Namespace) -> None:
    """Each parsed value is what a flag's type makes (or a list of strings: --connect)."""
    for name, value in vars(args).items():
        if isinstance(value, list):
            assert value or name == "host_max", f"{name} = {value!r}"  # --host-max may be absent
            assert all(isinstance(item, str) for item in value), f"{name} = {value!r}"
        else:
            assert value is None or isinstance(value, bool | int | float | str) or callable(value), (
                f"{name} = {value!r}"
            )


def parse_argv(command: str, argv: list[str]):
    """(parser, args), args None when the parser exited; the outcome checked."""
    parser = PARSERS[command]()
    code, args, out, err = quietly(lambda: parser.parse_args(argv))
    check_outcome(command, code, out, err)
    if args is not None:
        check_values(args)
    return parser, args


WORDS = {command: sorted(words_of(build())) for command, build in PARSERS.items()}

#: (command, argv): a command and an argv drawn from its own words.
cases = st.sampled_from(sorted(PARSERS)).flatmap(
    lambda command: st.tuples(st.just(command), argvs(set(WORDS[command])))
)

#: Five commands share the examples: a hundred each.
FIVE_COMMANDS = settings(PROPERTY, max_examples=500)


# -- parse_args alone --------------------------------------------------------------------


@FIVE_COMMANDS
@given(case=cases)
@example(case=("virtscale-worker", ["a\nb"]))
@example(case=("virtscale-producer", ["--rate=1", "x\r"]))
@example(case=("virtscale-worker", ["--queue=--"]))
@example(case=("virtscale-scaler", ["status", "--connect=--"]))
def test_any_argv_parses_or_exits_0_or_2_with_one_line(case):
    parse_argv(*case)


# -- the start-up checks after parse_args ------------------------------------------------


def scaler_checks(args: argparse.Namespace) -> None:
    parser = args.handler.args[0]  # the subcommand's parser, bound to its handler
    if args.command == "run":
        check_flags(parser, args)
    if args.command == "status":
        queue_monitor(parser, args)
    if args.command == "simulate":
        config = policy_config(parser, args)
        world_from(parser, args, config)
        load_from(parser, args)


#: What each command's main() checks after parse_args and before it connects to anything.
START_UP_CHECKS = {
    "virtscale-worker": resolve_and_check_amqp_urls,
    "virtscale-collector": resolve_and_check_amqp_urls,
    "virtscale-producer": lambda parser, args: (
        resolve_and_check_amqp_urls(parser, args),
        producer_cli.pacing_from(parser, args),
    ),
    "virtscale-scaler": lambda _parser, args: scaler_checks(args),
    "virtscale-broker": lambda parser, args: (
        queue_names(args),
        args.command == "definitions" or resolve_and_check_amqp_urls(parser, args),
    ),
}


@FIVE_COMMANDS
@given(case=cases)
@example(case=("virtscale-collector", ["--amqp-url=--"]))
@example(case=("virtscale-collector", ["--amqp-url", "amqp://["]))
@example(case=("virtscale-broker", ["declare", "--amqp-url=amqp://u:p@[::1/"]))
@example(case=("virtscale-scaler", ["status", "--management-url", "http://[x"]))
def test_any_argv_passes_the_start_up_checks_or_exits_2_with_one_line(case):
    command, argv = case
    parser, args = parse_argv(command, argv)
    if args is None:
        return
    code, _result, out, err = quietly(lambda: START_UP_CHECKS[command](parser, args))
    check_outcome(command, code, out, err)
