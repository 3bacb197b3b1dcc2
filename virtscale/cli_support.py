"""Start-up checks that need both the flag plumbing (virtscale.config) and the broker client
(virtscale.broker), which config cannot import: broker imports config."""

from __future__ import annotations

import argparse

from virtscale.broker import BrokerRefused, check_url
from virtscale.config import resolve_amqp_url


def resolve_and_check_amqp_url(parser: argparse.ArgumentParser, args: argparse.Namespace) -> str:
    """The broker URL every command connects with: resolved (password, shape, port), then checked
    as pika would read it (query options such as ?heartbeat=), so a URL no connection could use
    is a flag error at start-up, the same in every command. Nothing connects here."""
    url = resolve_amqp_url(parser, args)
    try:
        check_url(url)
    except BrokerRefused as exc:
        parser.error(f"{' '.join(str(exc).split())} (the flag or VIRTSCALE_AMQP_URL)")
    return url
