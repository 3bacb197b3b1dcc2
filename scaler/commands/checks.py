"""Start-up checks shared by the scaler's subcommands: a flag that names a file to write is
checked before anything starts, and a bad one is a one-line error."""

from __future__ import annotations

import argparse
import os


def check_writable(parser: argparse.ArgumentParser, flag: str, path: str | None) -> None:
    """``path`` can be created or appended to: its folder exists and may be written."""
    if path is None:
        return
    if os.path.isdir(path):
        parser.error(f"{flag} {path}: is a folder; give a file name")
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        parser.error(f"{flag} {path}: folder {folder} does not exist")
    if not os.access(path if os.path.exists(path) else folder, os.W_OK):
        parser.error(f"{flag} {path}: not writable")
