"""Vehicle registration numbers in the original's format, e.g. ``KL-07-AB-1234``."""

import random
import string

#: The 37 two-letter state and union-territory codes the original drew from.
STATE_CODES = (
    "AN",
    "AP",
    "AR",
    "AS",
    "BR",
    "CH",
    "CG",
    "DD",
    "DL",
    "DN",
    "GA",
    "GJ",
    "HR",
    "HP",
    "JK",
    "JH",
    "KA",
    "KL",
    "LA",
    "LD",
    "MP",
    "MH",
    "MN",
    "ML",
    "MZ",
    "NL",
    "OD",
    "PY",
    "PB",
    "RJ",
    "SK",
    "TN",
    "TS",
    "TR",
    "UP",
    "UK",
    "WB",
)

#: Series letters: the 24 capitals without I and O, which read like 1 and 0.
SERIES_LETTERS = tuple(letter for letter in string.ascii_uppercase if letter not in "IO")


class LicenseGenerator:
    """Random license numbers; the same seed gives the same sequence."""

    def __init__(self, seed: int | None = None):
        self._random = random.Random(seed)

    def __call__(self) -> str:
        pick = self._random.choice
        district = self._random.randrange(100)
        series = pick(SERIES_LETTERS) + pick(SERIES_LETTERS)
        number = self._random.randrange(10000)
        return f"{pick(STATE_CODES)}-{district:02d}-{series}-{number:04d}"
