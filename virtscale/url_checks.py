"""Start-up checks of the URLs a command is given, so a URL that can never work is a one-line
flag error (exit 2) before anything connects, instead of an error on the first connection."""

from __future__ import annotations

import argparse
import urllib.parse

from virtscale.config import redact_url, resolve_amqp_url


def checked_amqp_url(parser: argparse.ArgumentParser, args: argparse.Namespace) -> str:
    """resolve_amqp_url, after checking the port: a port outside 1-65535 would otherwise only
    fail when the first connection is made (or, with the password from the environment, raise)."""
    check_port(parser, "--amqp-url", args.amqp_url, "VIRTSCALE_AMQP_URL")
    return resolve_amqp_url(parser, args)


def check_port(parser: argparse.ArgumentParser, flag: str, url: str, variable: str | None = None) -> None:
    """An explicit port in ``url`` must be 1-65535; ``variable`` names the environment variable
    the flag's default comes from, as the value may have come from there."""
    try:
        port = urllib.parse.urlsplit(url).port
    except ValueError:
        port = 0
    if port == 0:
        source = f" (the flag or {variable})" if variable else ""
        parser.error(f"{flag}: the port must be 1-65535, got {redact_url(url)!r}{source}")
