"""virtscale-broker: declare (or delete) the queues every component relies on.

Run once with an account that may configure queues (make broker does); the
components themselves only check that the queues exist.
"""

from __future__ import annotations

import sys

from virtscale import defaults
from virtscale.broker import BrokerRefused, BrokerUnavailable, declare_topology, delete_topology
from virtscale.config import (
    OneLineParser,
    add_common_options,
    configure_logging,
    positive_int,
    queue_names,
    resolve_amqp_url,
)


def main(argv: list[str] | None = None) -> int:
    parser = OneLineParser(prog="virtscale-broker", description=__doc__)
    parser.add_argument("command", choices=["declare", "delete"])
    add_common_options(parser)
    parser.add_argument(
        "--delivery-limit",
        type=positive_int,
        default=defaults.DELIVERY_LIMIT,
        help="deliveries of a job before it is dead-lettered (default: %(default)s)",
    )
    args = parser.parse_args(argv)
    url = resolve_amqp_url(parser, args)
    configure_logging(args.log_level, args.log_format)
    try:
        if args.command == "declare":
            declare_topology(url, queue_names(args), args.delivery_limit)
        else:
            delete_topology(url, queue_names(args))
    except (BrokerRefused, BrokerUnavailable) as exc:
        print(f"virtscale-broker: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
