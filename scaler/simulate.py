"""virtscale-scaler simulate: placeholder until the simulator lands."""


def add_simulate_parser(commands) -> None:
    commands.add_parser("simulate", help="replay load against a policy (not yet available)")


def run_simulation(parser, args) -> int:
    parser.error("simulate is not available yet")
