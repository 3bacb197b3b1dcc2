"""Command-line plumbing shared by every component: common flags, one-line errors, logging.

Configuration is layered: defaults (virtscale.defaults), then environment, then flags;
it is validated once at start-up and a bad value exits 2 with one line saying what to fix.
"""

from __future__ import annotations

import argparse
import datetime
import ipaddress
import json
import logging
import os
import re
import sys
import urllib.parse
from collections.abc import Callable
from typing import NoReturn

from virtscale import __version__, defaults
from virtscale.naming import QueueNames

#: Anything shaped like a license number (2 letters, 2 digits, 1-2 letters, 4 digits), in either
#: case, the groups joined by dashes, spaces or nothing. A last resort only: no code path logs a
#: license number; this scrubs one should it ever reach a log line by mistake.
LICENSE_PATTERN = re.compile(r"\b[A-Z]{2}[- ]?\d{2}[- ]?[A-Z]{1,2}[- ]?\d{4}\b", re.IGNORECASE)

QUEUE_NAME_PATTERN = re.compile(r"[A-Za-z0-9_.:-]{1,200}")


class OneLineParser(argparse.ArgumentParser):
    """An ArgumentParser whose errors are one line and exit status 2. Its help keeps the layout
    of the description and of the examples every command ends its help with."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("formatter_class", argparse.RawDescriptionHelpFormatter)
        super().__init__(*args, **kwargs)

    def error(self, message: str) -> NoReturn:
        # argparse repeats raw arguments in its messages: a newline in one must not make two lines.
        message = message.replace("\r", "\\r").replace("\n", "\\n")
        self.exit(2, f"{self.prog}: error: {message}\n")

    def _get_values(self, action: argparse.Action, arg_strings: list[str]):
        # Python 3.11 drops a lone '--' value (--queue=--) and stores [] past the flag's type.
        if action.option_strings and action.nargs is None and arg_strings == ["--"]:
            self.error(f"argument {'/'.join(action.option_strings)}: expected one value, got '--'")
        return super()._get_values(action, arg_strings)


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


#: The bounds of the flags that could otherwise hang or overflow a command, in one place.
DAY = 86_400.0
#: Seconds flags of the scaler: interval, window, cooldowns, timeouts, delays.
MAX_SECONDS = DAY
#: --idle-to-zero may be long (a pool that rarely goes to zero), not unbounded.
MAX_IDLE_TO_ZERO = 365 * DAY
#: The simulator's horizon, and so every time in a profile it replays: 30 days.
MAX_SIMULATED_SECONDS = 30 * DAY
#: The shortest tick: shorter ones only add ticks (and a simulation that never finishes).
MIN_INTERVAL = 0.1
#: The largest pool the scaler manages or simulates, and the most slots per VM.
MAX_VMS = 1000
MAX_VCPUS = 256
#: Deliveries of a job before it is dead-lettered (RabbitMQ's limit is a 32-bit integer).
MAX_DELIVERY_LIMIT = 1000


def bounded_float(low: float, high: float, *, low_open: bool = False) -> Callable[[str], float]:
    """An argparse type: a finite number from ``low`` (excluded with ``low_open``) to ``high``;
    the bounds are on the returned function (``.low``, ``.high``) for help texts."""

    def bounded(text: str) -> float:
        value = _number(text, float)
        if low_open and value <= low:
            raise argparse.ArgumentTypeError(f"must be greater than {low:.15g}, got {text!r}")
        if value < low:
            what = "0 or more" if low == 0 else f"at least {low:.15g}"
            raise argparse.ArgumentTypeError(f"must be {what}, got {text!r}")
        if value > high:
            raise argparse.ArgumentTypeError(f"must be at most {high:.15g}, got {text!r}")
        return value

    bounded.low, bounded.high = low, high
    return bounded


#: TCP ports to listen on or connect to; 0 would mean "any free port", which no client could find.
PORTS = range(1, 65536)


def port_number(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a port number 1-65535, got {text!r}") from None
    if value not in PORTS:
        raise argparse.ArgumentTypeError(f"must be a port number 1-65535, got {text!r}")
    return value


def bounded_int(low: int, high: int) -> Callable[[str], int]:
    """An argparse type: a whole number from ``low`` to ``high``."""

    def bounded(text: str) -> int:
        value = _number(text, int)
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"must be a whole number from {low} to {high}, got {text!r}")
        return value

    bounded.low, bounded.high = low, high
    return bounded


def from_variable(kind: Callable[[str], object], variable: str) -> Callable[[str], object]:
    """``kind`` whose errors also name ``variable``, as the flag's default comes from it."""

    def checked(text: str) -> object:
        try:
            return kind(text)
        except argparse.ArgumentTypeError as exc:
            raise argparse.ArgumentTypeError(f"{exc} (the flag or {variable})") from None

    return checked


#: One DNS label: letters, digits and inner hyphens, 63 characters at most.
DNS_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
#: A DNS name of labels joined by dots, 253 characters at most.
HOST_NAME = re.compile(rf"(?=.{{1,253}}\Z){DNS_LABEL}(?:\.{DNS_LABEL})*")


def host_or_address(text: str, ipv4_only: bool = False) -> str:
    """An IP address (IPv4 only with ``ipv4_only``) or a DNS host name, as an argparse type."""
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        if HOST_NAME.fullmatch(text) and not text.replace(".", "").isdigit():
            return text
    else:
        if not ipv4_only or address.version == 4:
            return str(address)
    kind = "an IPv4 address" if ipv4_only else "an IP address"
    raise argparse.ArgumentTypeError(f"must be {kind} or a host name, got {text!r}")


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
        type=from_variable(log_format, "VIRTSCALE_LOG_FORMAT"),
        metavar="FORMAT",
        default=os.environ.get("VIRTSCALE_LOG_FORMAT", "text"),
        help="text, or json: one object a line for journald and log shippers "
        "(env VIRTSCALE_LOG_FORMAT; default: text)",
    )


def url_list(text: str) -> list[str]:
    """The URLs in a comma-separated list (a flag's or an environment variable's value). A comma
    splits only where a URL starts after it (``scheme://``), so that one inside a password stays;
    stray commas and blanks around a URL go. Nothing in it is [""], which no URL check accepts."""
    urls = [url.strip(" \t,") for url in re.split(r",(?=\s*[A-Za-z][A-Za-z0-9+.-]*://)", text)]
    return [url for url in urls if url] or [""]


class _UrlList(argparse.Action):
    """A repeatable URL flag whose default is a list from an environment variable: the first URL
    given replaces that default, the next ones add to it (the nodes of one cluster). Notes that
    the flag was given (``<dest>_given``): only then does a password in --amqp-url win over
    VIRTSCALE_AMQP_PASSWORD."""

    def __call__(self, parser, namespace, values, option_string=None) -> None:
        given = f"{self.dest}_given"
        earlier = getattr(namespace, self.dest) if getattr(namespace, given, False) else []
        setattr(namespace, self.dest, [*earlier, *url_list(values)])
        setattr(namespace, given, True)


def add_common_options(parser: argparse.ArgumentParser) -> None:
    """The flags every broker client takes: broker, queue, logging, version."""
    parser.add_argument(
        "--amqp-url",
        dest="amqp_urls",
        action=_UrlList,
        metavar="URL",
        default=url_list(os.environ.get("VIRTSCALE_AMQP_URL", defaults.AMQP_URL)),
        help="broker URL, amqp:// or amqps://; repeat it (or separate by commas) for each node of a "
        "cluster: a connection goes to one and fails over to the next "
        # argparse %-formats help texts: the %2F of the default vhost must be written %%2F.
        f"(env VIRTSCALE_AMQP_URL, comma-separated; default: {defaults.AMQP_URL.replace('%', '%%')})",
    )
    parser.add_argument(
        "--password-file",
        metavar="FILE",
        default=os.environ.get("VIRTSCALE_AMQP_PASSWORD_FILE"),
        help="file holding the broker password, which replaces the one in the URL(s) "
        "(env VIRTSCALE_AMQP_PASSWORD_FILE, or the password itself in VIRTSCALE_AMQP_PASSWORD)",
    )
    parser.add_argument(
        "--ca-file",
        metavar="FILE",
        default=os.environ.get("VIRTSCALE_CA_FILE") or None,
        help="CA certificate(s) (PEM) that an amqps:// broker's certificate must chain to; its host "
        "name is verified too (env VIRTSCALE_CA_FILE; default: the system's CAs)",
    )
    parser.add_argument(
        "--queue",
        type=from_variable(queue_name, "VIRTSCALE_QUEUE"),
        metavar="QUEUE",
        default=os.environ.get("VIRTSCALE_QUEUE", defaults.QUEUE),
        help="job queue; results on QUEUE.hashed, dead letters on QUEUE.dead "
        "(env VIRTSCALE_QUEUE; default: %(default)s)",
    )
    add_logging_options(parser)
    add_version_option(parser)


def add_management_options(parser: argparse._ActionsContainer) -> None:
    """--management-url (repeatable, one per node of a cluster) and --management-ca."""
    parser.add_argument(
        "--management-url",
        dest="management_urls",
        action=_UrlList,
        metavar="URL",
        default=url_list(os.environ.get("VIRTSCALE_MANAGEMENT_URL", defaults.MANAGEMENT_URL)),
        help="RabbitMQ management API, http:// or https://; repeat it (or separate by commas) for "
        "each node of a cluster: any node that answers will do; credentials are those of the first "
        "--amqp-url "
        f"(env VIRTSCALE_MANAGEMENT_URL, comma-separated; default: {defaults.MANAGEMENT_URL})",
    )
    parser.add_argument("--management-ca", metavar="FILE", help="CA bundle to verify an https management URL")


def resolve_amqp_urls(parser: argparse.ArgumentParser, args: argparse.Namespace) -> tuple[str, ...]:
    """The broker URLs with their password, each checked for shape. The password comes from
    --password-file (flag or VIRTSCALE_AMQP_PASSWORD_FILE), else from an --amqp-url given as a
    flag, else from VIRTSCALE_AMQP_PASSWORD, else from the URL in VIRTSCALE_AMQP_URL."""
    password = file_password(parser, args.password_file)
    return tuple(_resolve_amqp_url(parser, args, url, password) for url in args.amqp_urls)


def _resolve_amqp_url(
    parser: argparse.ArgumentParser, args: argparse.Namespace, url: str, password: str | None
) -> str:
    check_port(parser, "--amqp-url", url, "VIRTSCALE_AMQP_URL")
    parts = split_url(parser, "--amqp-url", url, "VIRTSCALE_AMQP_URL")
    if parts.scheme not in ("amqp", "amqps") or not parts.hostname:
        parser.error(
            f"--amqp-url must look like amqp://user:password@host:5672/vhost, got {redact_url(url)!r}"
            " (the flag or VIRTSCALE_AMQP_URL)"
        )
    if password is None and not (getattr(args, "amqp_urls_given", False) and parts.password is not None):
        password = os.environ.get("VIRTSCALE_AMQP_PASSWORD")
    if password is None:
        return url
    user = urllib.parse.quote(urllib.parse.unquote(parts.username or "guest"), safe="")
    host = parts.hostname if ":" not in parts.hostname else f"[{parts.hostname}]"
    port = f":{parts.port}" if parts.port else ""
    netloc = f"{user}:{urllib.parse.quote(password, safe='')}@{host}{port}"
    return urllib.parse.urlunsplit((parts.scheme, netloc, parts.path, parts.query, ""))


def resolve_management_urls(parser: argparse.ArgumentParser, args: argparse.Namespace) -> tuple[str, ...]:
    """The --management-url values, each checked for shape, and a readable --management-ca."""
    variable = "VIRTSCALE_MANAGEMENT_URL"
    for url in args.management_urls:
        check_port(parser, "--management-url", url, variable)
        parts = split_url(parser, "--management-url", url, variable)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            shape = "--management-url must be http(s)://host:port"
            parser.error(f"{shape}, got {redact_url(url)!r} (the flag or {variable})")
    if args.management_ca is not None and not os.access(args.management_ca, os.R_OK):
        parser.error(f"--management-ca {args.management_ca}: no such file, or not readable")
    return tuple(args.management_urls)


def broker_identity(url: str) -> tuple[tuple[str, str], str]:
    """((user, password), vhost) of an AMQP URL: what its management API calls are made as."""
    parts = urllib.parse.urlsplit(url)
    auth = (urllib.parse.unquote(parts.username or "guest"), urllib.parse.unquote(parts.password or "guest"))
    vhost = urllib.parse.unquote(parts.path[1:]) if len(parts.path) > 1 else "/"
    return auth, vhost


def file_password(parser: argparse.ArgumentParser, path: str | None) -> str | None:
    """The password in --password-file, None without one; an empty name is an error."""
    if path is None:
        return None
    source = "(the flag or VIRTSCALE_AMQP_PASSWORD_FILE)"
    if not path:
        parser.error(f"--password-file: the file name is empty {source}")
    try:
        with open(path, encoding="utf-8") as handle:
            return handle.read().strip()
    except OSError as exc:
        parser.error(f"--password-file {path!r} cannot be read: {exc.strerror or exc} {source}")
    except UnicodeDecodeError:
        parser.error(f"--password-file {path!r} cannot be read: not UTF-8 text {source}")


def split_url(
    parser: argparse.ArgumentParser, flag: str, url: str, variable: str | None = None
) -> urllib.parse.SplitResult:
    """``url`` split, its host and port read once so a malformed one (``http://[::1/``) is a
    flag error here rather than a ValueError later."""
    try:
        parts = urllib.parse.urlsplit(url)
        parts.hostname, parts.port  # noqa: B018 - both raise ValueError on a malformed URL
    except ValueError as exc:
        source = f" (the flag or {variable})" if variable else ""
        parser.error(f"{flag}: malformed URL {redact_url(url)!r}: {exc}{source}")
    return parts


def check_port(parser: argparse.ArgumentParser, flag: str, url: str, variable: str | None = None) -> None:
    """An explicit port in ``url`` must be 1-65535, checked at start-up (a bad one would fail only
    at the first connection); ``variable`` names the environment variable the flag may come from."""
    try:
        parts = urllib.parse.urlsplit(url)
    except ValueError:
        return  # malformed beyond its port: split_url says so
    try:
        port = parts.port
    except ValueError:
        port = 0
    if port == 0:
        source = f" (the flag or {variable})" if variable else ""
        parser.error(f"{flag}: the port must be 1-65535, got {redact_url(url)!r}{source}")


def redact_url(url: str) -> str:
    """The URL with its password replaced, for log lines and error messages."""
    try:
        parts = urllib.parse.urlsplit(url)
        if parts.password is None:
            return url
    except ValueError:  # malformed: keep only what follows the last "@" (a password may hold one)
        return url.rsplit("@", 1)[-1]
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
