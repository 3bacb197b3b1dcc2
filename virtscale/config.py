"""Command-line plumbing shared by every component: common flags, one-line errors, logging.

Configuration is layered: defaults (virtscale.defaults), then environment, then flags;
it is validated once at start-up and a bad value exits 2 with one line saying what to fix.
"""

from __future__ import annotations

import argparse
import datetime
import json
import logging
import os
import re
import sys
import urllib.parse
from typing import NoReturn

from virtscale import __version__, defaults
from virtscale.naming import QueueNames

#: What a license number looks like; used only to scrub it should one ever reach a log line.
LICENSE_PATTERN = re.compile(r"\b[A-Z]{2}-\d{2}-[A-Z]{2}-\d{4}\b")

QUEUE_NAME_PATTERN = re.compile(r"[A-Za-z0-9_.:-]{1,200}")


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
    if not QUEUE_NAME_PATTERN.fullmatch(text):
        raise argparse.ArgumentTypeError(f"must be 1-200 letters, digits or . _ : -, got {text!r}")
    return text


LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")
LOG_FORMATS = ("text", "json")


def log_level(text: str) -> str:
    value = text.strip().upper()
    if value not in LOG_LEVELS:
        raise argparse.ArgumentTypeError(
            f"must be one of {', '.join(LOG_LEVELS)}, got {text!r} (the flag or VIRTSCALE_LOG_LEVEL)"
        )
    return value


def log_format(text: str) -> str:
    value = text.strip().lower()
    if value not in LOG_FORMATS:
        raise argparse.ArgumentTypeError(f"must be one of {', '.join(LOG_FORMATS)}, got {text!r}")
    return value


def add_version_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")


def add_logging_options(parser: argparse.ArgumentParser, default_level: str = "INFO") -> None:
    """--log-level and --log-format. Their defaults come from the environment as text, so a bad
    VIRTSCALE_LOG_LEVEL is reported like a bad flag (argparse converts string defaults too)."""
    parser.add_argument(
        "--log-level",
        type=log_level,
        metavar="LEVEL",
        default=os.environ.get("VIRTSCALE_LOG_LEVEL", default_level),
        help=f"{', '.join(LOG_LEVELS)} (env VIRTSCALE_LOG_LEVEL; default: {default_level})",
    )
    parser.add_argument(
        "--log-format",
        type=log_format,
        metavar="FORMAT",
        default=os.environ.get("VIRTSCALE_LOG_FORMAT", "text"),
        help="text, or json: one object a line for journald and log shippers "
        "(env VIRTSCALE_LOG_FORMAT; default: text)",
    )


def add_common_options(parser: argparse.ArgumentParser) -> None:
    """The flags every broker client takes: broker, queue, logging, version."""
    parser.add_argument(
        "--amqp-url",
        metavar="URL",
        default=os.environ.get("VIRTSCALE_AMQP_URL", defaults.AMQP_URL),
        help="broker URL, amqp:// or amqps:// (env VIRTSCALE_AMQP_URL; default: %(default)s)",
    )
    parser.add_argument(
        "--password-file",
        metavar="FILE",
        default=os.environ.get("VIRTSCALE_AMQP_PASSWORD_FILE"),
        help="file holding the broker password, which replaces the one in the URL "
        "(env VIRTSCALE_AMQP_PASSWORD_FILE, or the password itself in VIRTSCALE_AMQP_PASSWORD)",
    )
    parser.add_argument(
        "--queue",
        type=queue_name,
        metavar="QUEUE",
        default=os.environ.get("VIRTSCALE_QUEUE", defaults.QUEUE),
        help="job queue; results on QUEUE.hashed, dead letters on QUEUE.dead "
        "(env VIRTSCALE_QUEUE; default: %(default)s)",
    )
    add_logging_options(parser)
    add_version_option(parser)


def resolve_amqp_url(parser: argparse.ArgumentParser, args: argparse.Namespace) -> str:
    """The broker URL with its password from the file or environment, checked for shape."""
    url = args.amqp_url
    parts = urllib.parse.urlsplit(url)
    check_port(parser, "--amqp-url", url, "VIRTSCALE_AMQP_URL")
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


def check_port(parser: argparse.ArgumentParser, flag: str, url: str, variable: str | None = None) -> None:
    """An explicit port in ``url`` must be 1-65535, checked at start-up (a bad one would fail only
    at the first connection); ``variable`` names the environment variable the flag may come from."""
    try:
        port = urllib.parse.urlsplit(url).port
    except ValueError:
        port = 0
    if port == 0:
        source = f" (the flag or {variable})" if variable else ""
        parser.error(f"{flag}: the port must be 1-65535, got {redact_url(url)!r}{source}")


def redact_url(url: str) -> str:
    """The URL with its password replaced, for log lines and error messages."""
    parts = urllib.parse.urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
    return urllib.parse.urlunsplit(parts._replace(netloc=netloc))


def queue_names(args: argparse.Namespace) -> QueueNames:
    return QueueNames(args.queue)


def scrub_licenses(text: str) -> str:
    """``text`` with anything shaped like a license number replaced."""
    return LICENSE_PATTERN.sub("[license]", text)


class _TextFormatter(logging.Formatter):
    """Date and time, level, logger, message; the whole formatted record (a traceback included)
    is scrubbed: defence in depth, should a license number ever reach a log record."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s", "%Y-%m-%d %H:%M:%S")

    def format(self, record: logging.LogRecord) -> str:
        return scrub_licenses(super().format(record))


class _JsonFormatter(logging.Formatter):
    """One JSON object a line: time (ISO 8601, UTC), level, logger, message, traceback if any."""

    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "time": datetime.datetime.fromtimestamp(record.created, datetime.UTC).isoformat(
                timespec="milliseconds"
            ),
            "level": record.levelname,
            "logger": record.name,
            "message": scrub_licenses(record.getMessage()),
        }
        if record.exc_info:
            entry["traceback"] = scrub_licenses(self.formatException(record.exc_info))
        return json.dumps(entry, ensure_ascii=False)


#: Libraries whose own log lines repeat what ours already say (pika logs an ERROR and a
#: traceback for every failed reconnect attempt; our one WARNING per attempt says it all).
QUIET_LIBRARIES = ("pika", "urllib3", "matplotlib")


def configure_logging(level: str, log_format: str = "text") -> None:
    """Logging for a command-line entry point; library code only calls getLogger."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_JsonFormatter() if log_format == "json" else _TextFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    for library in QUIET_LIBRARIES:
        # Their warnings only at DEBUG (never their debug lines: pika's would carry message
        # bodies); otherwise only what is critical.
        logging.getLogger(library).setLevel(logging.WARNING if level == "DEBUG" else logging.CRITICAL)
