"""make bench: the worker, producer, scaler and collector benchmarks, printed as tables (figures,
not assertions). make bench-policy runs the policy lab (`python -m bench policy`)."""

import argparse
import sys

from bench import collector, fleet, pipeline, policy, scaler_tick, tls, warm

BENCHMARKS = {
    "worker": pipeline.worker_efficiency,
    "producer": pipeline.producer_efficiency,
    "scaler": scaler_tick.tick_cost,
    "collector": collector.collector_rows,
    "policy": policy.run,
    "fleet": fleet.run,
    "warm": warm.run,
    "tls": tls.run,
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument(
        "which",
        nargs="*",
        default=["worker", "producer", "scaler", "collector"],
        help=f"benchmarks to run, of {', '.join(BENCHMARKS)} (default: worker producer scaler collector)",
    )
    args = parser.parse_args(argv)
    unknown = [name for name in args.which if name not in BENCHMARKS]
    if unknown:
        parser.error(f"unknown benchmark {unknown[0]!r}; choose from {', '.join(BENCHMARKS)}")
    for name in args.which:
        BENCHMARKS[name]()
    return 0


if __name__ == "__main__":
    sys.exit(main())
