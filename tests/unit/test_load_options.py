"""One definition of the load-profile flags: the producer and `virtscale-scaler simulate` accept
the same values, each with its own defaults."""

from __future__ import annotations

import pytest

from virtscale.load import ProfileSpec
from virtscale.producer.cli import build_parser as producer_parser
from virtscale.scaler.cli import build_parser as scaler_parser
from virtscale.scaler.commands.simulate import load_from
from virtscale.scaler.lab import STANDARD_PROFILES
from virtscale.scaler.simulator import World


def parse_producer(*argv: str):
    return producer_parser().parse_args(list(argv))


def parse_simulate(*argv: str):
    return scaler_parser().parse_args(["simulate", *argv])


@pytest.mark.parametrize("parse", [parse_producer, parse_simulate])
def test_a_profile_may_have_zero_base_load_in_both_commands(parse):
    args = parse("--profile", "step", "--base", "0", "--peak", "0", "--start", "0")
    assert (args.base, args.peak, args.start) == (0.0, 0.0, 0.0)


@pytest.mark.parametrize("parse", [parse_producer, parse_simulate])
@pytest.mark.parametrize(
    "argv",
    [
        ["--base", "-1"],
        ["--peak", "-0.5"],
        ["--start", "-1"],
        ["--duration", "0"],
        ["--period", "0"],
        ["--trace"],
    ],
)
def test_the_same_bounds_in_both_commands(parse, argv, capsys):
    with pytest.raises(SystemExit) as exit_:
        parse("--profile", "step", *argv)
    assert exit_.value.code == 2
    assert argv[0] in capsys.readouterr().err


def test_the_simulator_has_a_length_and_the_producer_does_not():
    assert parse_simulate("--length", "60").length == 60.0
    with pytest.raises(SystemExit):
        parse_simulate("--length", "0")
    with pytest.raises(SystemExit):
        parse_producer("--length", "60")


def test_each_command_keeps_its_defaults():
    producer = parse_producer("--profile", "sine")
    assert (producer.base, producer.peak, producer.period) == (
        ProfileSpec.base,
        ProfileSpec.peak,
        ProfileSpec.period,
    )
    parser = scaler_parser()
    simulate = parser.parse_args(["simulate", "--profile", "ramp"])
    assert simulate.base is None, "unset: the standard profile's value applies"
    _rate, length, label = load_from(parser, simulate)
    assert (length, label) == (STANDARD_PROFILES["ramp"].length, "ramp")
    given = parser.parse_args(["simulate", "--profile", "ramp", "--length", "100", "--base", "0"])
    rate, length, _label = load_from(parser, given)
    assert length == 100.0 and rate(0.0) == 0.0


def test_the_shutdown_delay_default_is_the_models():
    assert parse_simulate().shutdown_delay == World.shutdown_delay
