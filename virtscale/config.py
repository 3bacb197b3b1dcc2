"""Command-line plumbing shared by every component: common flags, one-line errors, logging.

Configuration is layered: defaults (virtscale.defaults), then environment, then flags;
it is validated once at start-up and a bad value exits 2 with one line saying what to fix.
"""

from __future__ import annotations

import argparse
import logging
import os
import re
import sys
import urllib.parse
from typing import NoReturn

from virtscale import defaults
from virtscale.naming import QueueNames

#: What a license number looks like; used only to scrub it should one ever reach a log line.
LICENSE_PATTERN = re.compile(r"\b[A-Z]{2}-\d{2}-[A-Z]{2}-\d{4}\b")

QUEUE_NAME_PATTERN = re.compile(r"^[A-Za-z0-9_.:-]{1,200}$")


class OneLineParser(argparse.ArgumentParser):
    """An ArgumentParser whose errors are one line and exit status 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message}\n")


def positive_float(text: str) -> float:
    value = _number(text, float)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be greater than 0, got {text!r}")
    return value


def non_negative_float(text: str) -> float:
    value = _number(text, float)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, got {text!r}")
    return value


def positive_int(text: str) -> int:
    value = _number(text, int)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be a whole number above 0, got {text!r}")
    return value


def non_negative_int(text: str) -> int:
    value = _number(text, int)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be a whole number, 0 or more, got {text!r}")
    return value


def _number(text: str, kind: type) -> float | int:
    try:
        value = kind(text)
    except ValueError:
        what = "a whole number" if kind is int else "a number"
        raise argparse.ArgumentTypeError(f"must be {what}, got {text!r}") from None
    if value != value or value in (float("inf"), float("-inf")):
        raise argparse.ArgumentTypeError(f"must be a finite number, got {text!r}")
    return value


def queue_name(text: str) -> str:
    if not QUEUE_NAME_PATTERN.match(text):
        raise argparse.ArgumentTypeError(f"must be 1-200 letters, digits or . _ : -, got {text!r}")
    return text


def add_common_options(parser: argparse.ArgumentParser) -> None:
    """The flags every command takes: broker, queue, logging."""
    parser.add_argument(
        "--amqp-url",
        default=os.environ.get("VIRTSCALE_AMQP_URL", defaults.AMQP_URL),
        help="broker URL, amqp:// or amqps:// (env VIRTSCALE_AMQP_URL; default: %(default)s)",
    )
    parser.add_argument(
        "--password-file",
        default=os.environ.get("VIRTSCALE_AMQP_PASSWORD_FILE"),
        help="file holding the broker password, which replaces the one in the URL "
        "(env VIRTSCALE_AMQP_PASSWORD_FILE, or the password itself in VIRTSCALE_AMQP_PASSWORD)",
    )
    parser.add_argument(
        "--queue",
        type=queue_name,
        default=os.environ.get("VIRTSCALE_QUEUE", defaults.QUEUE),
        help="job queue; results on QUEUE.hashed, dead letters on QUEUE.dead (default: %(default)s)",
    )
    parser.add_argument(
        "--log-level",
        type=str.upper,
        choices=["DEBUG", "INFO", "WARNING", "ERROR"],
        default=os.environ.get("VIRTSCALE_LOG_LEVEL", "INFO").upper(),
        help="log verbosity (default: %(default)s)",
    )


def resolve_amqp_url(parser: argparse.ArgumentParser, args: argparse.Namespace) -> str:
    """The broker URL with its password from the file or environment, checked for shape."""
    url = args.amqp_url
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("amqp", "amqps") or not parts.hostname:
        parser.error(
            f"--amqp-url must look like amqp://user:password@host:5672/vhost, got {redact_url(url)!r}"
        )
    password = os.environ.get("VIRTSCALE_AMQP_PASSWORD")
    if args.password_file:
        try:
            with open(args.password_file, encoding="utf-8") as handle:
                password = handle.read().strip()
        except OSError as exc:
            parser.error(f"--password-file {args.password_file!r} cannot be read: {exc.strerror}")
    if password is None:
        return url
    user = urllib.parse.quote(urllib.parse.unquote(parts.username or "guest"), safe="")
    host = parts.hostname if ":" not in parts.hostname else f"[{parts.hostname}]"
    port = f":{parts.port}" if parts.port else ""
    netloc = f"{user}:{urllib.parse.quote(password, safe='')}@{host}{port}"
    return urllib.parse.urlunsplit((parts.scheme, netloc, parts.path, parts.query, ""))


def redact_url(url: str) -> str:
    """The URL with its password replaced, for log lines and error messages."""
    parts = urllib.parse.urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
    return urllib.parse.urlunsplit(parts._replace(netloc=netloc))


def queue_names(args: argparse.Namespace) -> QueueNames:
    return QueueNames(args.queue)


class _ScrubLicenses(logging.Filter):
    """Defence in depth: a license number that ever reaches a log record is replaced."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if LICENSE_PATTERN.search(message):
            record.msg = LICENSE_PATTERN.sub("[license]", message)
            record.args = ()
        return True


def configure_logging(level: str) -> None:
    """Logging for a command-line entry point; library code only calls getLogger."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s", "%H:%M:%S"))
    handler.addFilter(_ScrubLicenses())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    logging.getLogger("pika").setLevel(max(logging.WARNING, root.level))
