"""What ``pier inspect`` shows, for an image in the local store or (see remote.py) in a registry."""

from __future__ import annotations

from dataclasses import dataclass

from ..reference import parse_reference
from .content_store import ContentStore
from .image import ImageError, is_index, load_image, local_digest, read_json
from .platforms import Platform


@dataclass
class Inspected:
    """The document a reference names and, unless only that is wanted, one platform's image in it."""

    name: str
    digest: str  # of the document the reference names: an index or a manifest
    body: bytes  # that document, byte for byte as stored or served
    index: dict | None
    manifest_digest: str = ""
    manifest: dict | None = None
    config: dict | None = None
    config_body: bytes = b""

    def document(self) -> dict:
        """The JSON ``pier inspect`` prints: the same for a local image and a remote one."""
        return {
            "Name": self.name,
            "Digest": self.digest,
            "Index": self.index,
            "ManifestDigest": self.manifest_digest,
            "Manifest": self.manifest,
            "Config": self.config,
        }


def inspect_local(store: ContentStore, text: str, platform: Platform | None) -> Inspected:
    """An image of the local store; ``platform`` None for the named document alone (``--raw``)."""
    reference = parse_reference(text)
    digest = local_digest(store, reference)
    if digest is None:
        short = reference.familiar()
        raise ImageError(
            f"{short} is not in the local store: pier inspect --remote {short} reads it from its registry"
        )
    document = read_json(store, digest)  # one line, not a traceback, when the blob is gone
    found = Inspected(str(reference), digest, store.read(digest), None)
    if platform is None:
        return found
    image = load_image(store, digest, platform, need_layers=False)
    found.index = document if is_index(document) else None
    found.manifest_digest, found.manifest, found.config = image.digest, image.manifest, image.config
    found.config_body = store.read(image.manifest["config"]["digest"])
    return found
