"""Creating and deleting pool domains on one host through libvirt alone.

Nothing here needs a shell or a shared filesystem on the host, so a host reached as
qemu+ssh:// or qemu+tls:// works like the local one:
- a directory storage pool (``virtscale``) is created when the host lacks it, next to the
  host's ``default`` pool (or under /var/lib/libvirt on a system daemon without one);
- the worker image (qcow2 root, kernel, initrd) is uploaded through volume streams once per
  content hash, and marked complete only after the last byte, so a cut upload is redone;
- each domain gets a qcow2 overlay volume backed by that image and a small raw settings
  volume (name, broker URL, password) that the guest reads as a read-only disk: the password
  is never in the domain XML that any read-only client may dump;
- deleting a domain removes its volumes; images nothing uses any more are removed too.

Every libvirt call here may raise libvirtError: scaler/hypervisor.py turns them into its own
exceptions. Nothing else imports this module.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import posixpath
from dataclasses import dataclass
from xml.etree import ElementTree

import libvirt

from virtscale.scaler.ownership import PoolTag
from virtscale.scaler.template import SETTINGS_BYTES, DomainFiles, Template, domain_xml

log = logging.getLogger(__name__)

STORAGE_POOL = "virtscale"
#: Where the storage pool goes on a system daemon that has no ``default`` pool to sit beside.
SYSTEM_STORAGE_DIR = "/var/lib/libvirt/virtscale"
#: Volume-name prefix of the uploaded images; a domain's own volumes start with its name.
IMAGE_PREFIX = "image-"
#: Bytes per write of an upload stream.
UPLOAD_CHUNK = 1 << 20
#: The suffixes of a domain's own volumes (its console log is a file in the pool too).
DOMAIN_VOLUME_SUFFIXES = (".qcow2", ".settings", ".console.log")


@dataclass(frozen=True)
class ImageVolumes:
    rootfs: str
    kernel: str
    initrd: str


def image_volume_names(image_id: str) -> dict[str, str]:
    base = f"{IMAGE_PREFIX}{image_id}"
    return {
        "rootfs": f"{base}-rootfs.qcow2",
        "kernel": f"{base}-vmlinuz",
        "initrd": f"{base}-initrd.img",
        "complete": f"{base}.complete",
    }


def _volume_xml(name: str, capacity: int, fmt: str, backing: str | None = None) -> str:
    volume = ElementTree.Element("volume")
    ElementTree.SubElement(volume, "name").text = name
    ElementTree.SubElement(volume, "capacity", unit="bytes").text = str(capacity)
    target = ElementTree.SubElement(volume, "target")
    ElementTree.SubElement(target, "format", type=fmt)
    permissions = ElementTree.SubElement(target, "permissions")
    # Only the hypervisor may read a volume: a settings volume holds a password.
    ElementTree.SubElement(permissions, "mode").text = "0600"
    if backing is not None:
        store = ElementTree.SubElement(volume, "backingStore")
        ElementTree.SubElement(store, "path").text = backing
        ElementTree.SubElement(store, "format", type="qcow2")
    return ElementTree.tostring(volume, encoding="unicode")


class HostStorage:
    """One host's ``virtscale`` storage pool and the domains made from the template."""

    def __init__(self, connection: libvirt.virConnect, pool_name: str = STORAGE_POOL):
        self.connection = connection
        self.pool_name = pool_name

    # -- the storage pool --------------------------------------------------------------

    def storage_pool(self) -> libvirt.virStoragePool:
        """The storage pool, defined, built and started when missing."""
        try:
            pool = self.connection.storagePoolLookupByName(self.pool_name)
        except libvirt.libvirtError as exc:
            if exc.get_error_code() != libvirt.VIR_ERR_NO_STORAGE_POOL:
                raise
            pool = self._define_pool()
        if not pool.isActive():
            pool.create()
        return pool

    def _define_pool(self) -> libvirt.virStoragePool:
        element = ElementTree.Element("pool", type="dir")
        ElementTree.SubElement(element, "name").text = self.pool_name
        ElementTree.SubElement(ElementTree.SubElement(element, "target"), "path").text = self._pool_dir()
        pool = self.connection.storagePoolDefineXML(ElementTree.tostring(element, encoding="unicode"))
        with contextlib.suppress(libvirt.libvirtError):
            pool.build(0)  # mkdir on the host; a driver without it (test://) has the dir already
        with contextlib.suppress(libvirt.libvirtError):
            pool.setAutostart(1)
        log.info("%s: created storage pool %s", self.connection.getURI(), self.pool_name)
        return pool

    def _pool_dir(self) -> str:
        """Beside the host's default pool (…/libvirt/images -> …/libvirt/virtscale)."""
        try:
            default = self.connection.storagePoolLookupByName("default")
            path = ElementTree.fromstring(default.XMLDesc()).findtext("target/path")
            return posixpath.join(posixpath.dirname(path.rstrip("/")), self.pool_name)
        except libvirt.libvirtError:
            if "/system" in self.connection.getURI():
                return SYSTEM_STORAGE_DIR
            raise

    def _volume(self, pool: libvirt.virStoragePool, name: str) -> libvirt.virStorageVol | None:
        try:
            return pool.storageVolLookupByName(name)
        except libvirt.libvirtError as exc:
            if exc.get_error_code() == libvirt.VIR_ERR_NO_STORAGE_VOL:
                return None
            raise

    # -- the image ---------------------------------------------------------------------

    def ensure_image(self, template: Template) -> ImageVolumes:
        """The image's volumes on this host, uploaded first if the host lacks them."""
        pool = self.storage_pool()
        names = image_volume_names(template.image.id)
        if self._volume(pool, names["complete"]) is None:
            self._upload_image(pool, template, names)
        return ImageVolumes(
            *(pool.storageVolLookupByName(names[key]).path() for key in ("rootfs", "kernel", "initrd"))
        )

    def _upload_image(self, pool: libvirt.virStoragePool, template: Template, names: dict[str, str]) -> None:
        uri = self.connection.getURI()
        log.info("%s: uploading worker image %s", uri, template.image.id)
        for key, path in (
            ("rootfs", template.image.rootfs),
            ("kernel", template.image.kernel),
            ("initrd", template.image.initrd),
        ):
            stale = self._volume(pool, names[key])
            if stale is not None:  # from an upload that was cut: start again
                stale.delete(0)
            size = os.path.getsize(path)
            volume = pool.createXML(_volume_xml(names[key], size, "raw"), 0)
            with open(path, "rb") as source:
                self.upload(volume, source, size)
        pool.createXML(_volume_xml(names["complete"], 0, "raw"), 0)
        pool.refresh(0)
        log.info("%s: worker image %s uploaded", uri, template.image.id)

    def upload(self, volume: libvirt.virStorageVol, source, size: int) -> None:
        """Stream ``size`` bytes from the file object ``source`` into ``volume``."""
        stream = self.connection.newStream(0)
        try:
            volume.upload(stream, 0, size, 0)
            stream.sendAll(lambda _stream, nbytes, handle: handle.read(min(nbytes, UPLOAD_CHUNK)), source)
            stream.finish()
        except BaseException:
            with contextlib.suppress(libvirt.libvirtError):
                stream.abort()
            raise

    # -- domains -----------------------------------------------------------------------

    def create(self, name: str, template: Template, tag: PoolTag, settings: bytes, *, start: bool) -> None:
        """Volumes and domain for ``name``; started too if ``start``. On a failure, whatever was
        made is removed again, so a failed create leaves nothing behind."""
        image = self.ensure_image(template)
        pool = self.storage_pool()
        try:
            files = self._domain_volumes(pool, name, template, image, settings)
            domain = self.connection.defineXML(domain_xml(name, template, files, tag))
            if start:
                domain.create()
        except BaseException:
            with contextlib.suppress(libvirt.libvirtError):
                self.delete(name)
            raise

    def _domain_volumes(
        self, pool, name: str, template: Template, image: ImageVolumes, settings: bytes
    ) -> DomainFiles:
        for suffix in DOMAIN_VOLUME_SUFFIXES:  # leftovers of a domain of that name
            stale = self._volume(pool, name + suffix)
            if stale is not None:
                stale.delete(0)
        overlay = pool.createXML(
            _volume_xml(f"{name}.qcow2", template.image.rootfs_virtual_size, "qcow2", image.rootfs), 0
        )
        config = pool.createXML(_volume_xml(f"{name}.settings", SETTINGS_BYTES, "raw"), 0)
        self.upload_bytes(config, settings)
        directory = posixpath.dirname(overlay.path())
        return DomainFiles(
            kernel=image.kernel,
            initrd=image.initrd,
            storage_pool=self.pool_name,
            overlay_volume=f"{name}.qcow2",
            settings_volume=f"{name}.settings",
            console_log=posixpath.join(directory, f"{name}.console.log"),
        )

    def upload_bytes(self, volume: libvirt.virStorageVol, data: bytes) -> None:
        self.upload(volume, io.BytesIO(data), len(data))

    def delete(self, name: str) -> None:
        """Destroy (if running), undefine (managed save image too) and remove the volumes."""
        try:
            domain = self.connection.lookupByName(name)
        except libvirt.libvirtError as exc:
            if exc.get_error_code() != libvirt.VIR_ERR_NO_DOMAIN:
                raise
            domain = None
        if domain is not None:
            if domain.isActive():
                domain.destroy()
            domain.undefineFlags(libvirt.VIR_DOMAIN_UNDEFINE_MANAGED_SAVE)
        self.delete_volumes(name)

    def delete_volumes(self, name: str) -> None:
        pool = self.storage_pool()
        with contextlib.suppress(libvirt.libvirtError):
            pool.refresh(0)  # the console log is a file libvirt has not listed yet
        for suffix in DOMAIN_VOLUME_SUFFIXES:
            volume = self._volume(pool, name + suffix)
            if volume is not None:
                volume.delete(0)

    def collect_garbage(self, images_in_use: set[str], domains: set[str]) -> list[str]:
        """Remove the uploaded images no domain and no template uses (``images_in_use``), and
        the volumes of domains that are no longer defined (``domains``: every name on the host).
        Returns the names removed."""
        pool = self.storage_pool()
        removed = []
        # Completion markers first: a collection cut short must not leave a marked, partial image.
        for volume in sorted(pool.listAllVolumes(0), key=lambda v: not v.name().endswith(".complete")):
            name = volume.name()
            if name.startswith(IMAGE_PREFIX):
                image_id = name[len(IMAGE_PREFIX) :].split("-", 1)[0].split(".", 1)[0]
                unused = image_id not in images_in_use
            else:
                owner = next((name[: -len(s)] for s in DOMAIN_VOLUME_SUFFIXES if name.endswith(s)), None)
                unused = owner is not None and owner not in domains
            if unused:
                volume.delete(0)
                removed.append(name)
        return removed
