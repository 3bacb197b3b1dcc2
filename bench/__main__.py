"""make bench: every benchmark, printed as tables. Figures, not assertions."""

import argparse
import sys

from bench import pipeline


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument(
        "which",
        nargs="*",
        default=["worker", "producer", "scaler"],
        help="benchmarks to run (default: all)",
    )
    args = parser.parse_args(argv)
    for name in args.which:
        if name == "worker":
            pipeline.worker_efficiency()
        elif name == "producer":
            pipeline.producer_efficiency()
        elif name == "policy":
            from bench import policy

            policy.run()
        elif name == "scaler":
            try:
                from bench import scaler_tick
            except ImportError:
                print("scaler tick benchmark: not available")
                continue
            scaler_tick.tick_cost()
        else:
            parser.error(f"unknown benchmark {name!r}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
