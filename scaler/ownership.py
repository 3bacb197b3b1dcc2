"""Which domains belong to a pool: the tag in a domain's libvirt metadata, never its name.

A domain is in pool P only if `virDomainGetMetadata(ELEMENT, NAMESPACE)` gives
`<pool name="P" .../>`. The scaler never lists, starts, stops, saves, destroys or undefines
anything else, whatever it is called. The tag also says where the domain came from:
``origin="template"`` for the domains the scaler creates on demand (it deletes them when it
scales in) and ``origin="defined"`` for those an operator made (only ever started and stopped);
and ``image`` names the worker image a template domain runs, so a refresh can find the stale.
"""

from __future__ import annotations

import argparse
import re
from dataclasses import dataclass
from xml.etree import ElementTree

NAMESPACE = "http://virtscale.org/xmlns/pool/1"
#: The prefix the tag is written with (libvirt keeps one prefix per namespace).
PREFIX = "virtscale"
#: Domains the scaler created from the pool's template and deletes when it scales in.
FROM_TEMPLATE = "template"
#: Domains an operator defined (make vms, make tag): started and stopped, never deleted.
DEFINED = "defined"

#: A pool name: it prefixes the names of the domains created on demand (POOL-<n>).
POOL_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,47}")


@dataclass(frozen=True)
class PoolTag:
    pool: str
    origin: str = DEFINED
    #: Content hash of the worker image a template domain was created from ("" if unknown).
    image: str = ""
    #: What its settings were made from (template and credentials; template.generation): a
    #: saved domain of another generation is not restored, its save image is thrown away.
    generation: str = ""

    def element(self) -> str:
        """The metadata element, without namespace: libvirt adds it from setMetadata's URI."""
        element = ElementTree.Element("pool", name=self.pool, origin=self.origin)
        self._optional(element)
        return ElementTree.tostring(element, encoding="unicode")

    def _optional(self, element: ElementTree.Element) -> None:
        for key in ("image", "generation"):
            if getattr(self, key):
                element.set(key, getattr(self, key))

    def metadata_xml(self) -> str:
        """The tag as it sits inside a domain XML's <metadata>."""
        element = ElementTree.Element(f"{PREFIX}:pool", {f"xmlns:{PREFIX}": NAMESPACE, "name": self.pool})
        element.set("origin", self.origin)
        self._optional(element)
        return ElementTree.tostring(element, encoding="unicode")


def parse(xml: str | None) -> PoolTag | None:
    """The tag from what virDomainGetMetadata returned; None if absent or not ours."""
    if not xml:
        return None
    try:
        element = ElementTree.fromstring(xml)
    except ElementTree.ParseError:
        return None
    if element.tag.rsplit("}", 1)[-1] != "pool" or not element.get("name"):
        return None
    return PoolTag(
        element.get("name"),
        element.get("origin", DEFINED),
        element.get("image", ""),
        element.get("generation", ""),
    )


def pool_name(text: str) -> str:
    """--pool: a name, not a glob. Membership is the tag, so a pattern would mean nothing."""
    if any(character in text for character in "*?["):
        raise argparse.ArgumentTypeError(
            f"names a pool, not a glob of domain names (got {text!r}): a domain belongs to pool P "
            "when its metadata carries the pool tag; tag your own domains with "
            "`make tag POOL=P DOMAINS='a b'`"
        )
    if not POOL_NAME.fullmatch(text):
        raise argparse.ArgumentTypeError(
            f"must be 1-48 letters, digits, '.', '_' or '-' starting with a letter or digit, got {text!r}"
        )
    return text
