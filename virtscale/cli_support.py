"""Start-up checks that need both the flag plumbing (virtscale.config) and the broker client
(virtscale.broker), which config cannot import: broker imports config."""

from __future__ import annotations

import argparse

from virtscale.broker import BrokerRefused, Nodes, check_url
from virtscale.config import resolve_amqp_urls


def resolve_and_check_amqp_urls(parser: argparse.ArgumentParser, args: argparse.Namespace) -> tuple[str, ...]:
    """The broker URLs every command connects with (one, or one per node of a cluster): resolved
    (password, shape, port), then checked as pika would read them (query options such as
    ?heartbeat=), so a URL no connection could use is a flag error at start-up, the same in every
    command. Nothing connects here."""
    urls = resolve_amqp_urls(parser, args)
    for url in urls:
        try:
            check_url(url, getattr(args, "ca_file", None))
        except BrokerRefused as exc:
            parser.error(f"{' '.join(str(exc).split())} (the flag or VIRTSCALE_AMQP_URL)")
    return urls


def broker_nodes(urls: tuple[str, ...], args: argparse.Namespace) -> Nodes:
    """The checked URLs as the client's Nodes, with --ca-file for its amqps:// connections."""
    return Nodes(urls, getattr(args, "ca_file", None))
