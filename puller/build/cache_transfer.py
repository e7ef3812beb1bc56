"""The build cache in a registry: ``--cache-to REF`` exports it, ``--cache-from REF`` reuses it.

An exported cache is an OCI artifact: its config maps step keys to the layers they made,
its layers are those layers' blobs. A colleague's or a CI machine's build that reaches a
step with the same key downloads the layer (verified, like any pull) instead of running
the step: only the layers of hit steps are fetched, when they are hit.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict

from oci.jsonsafe import loads
from oci.mediatypes import OCI_MANIFEST

from ..errors import PierError
from ..reference import Reference
from ..store.content_store import ContentStore
from ..transfer.pull import Puller, Remote
from ..transfer.push import Pusher, local_source, run_transfer
from ..transfer.transport import Transport
from .cache import CachedStep

CACHE_ARTIFACT = "application/vnd.pier.build.cache.v1+json"
CACHE_CONFIG = "application/vnd.pier.build.cache.config.v1+json"
MAX_CACHE_CONFIG = 16 * 1024 * 1024


class CacheTransferError(PierError):
    pass


def export_cache(
    store: ContentStore, reference: Reference, transport: Transport, steps: dict[str, CachedStep]
) -> str:
    """Push ``steps`` and their layers as one artifact under ``reference``; its digest."""
    config = json.dumps(
        {"steps": {key: asdict(steps[key]) for key in sorted(steps)}}, separators=(",", ":")
    ).encode()
    config_digest = "sha256:" + hashlib.sha256(config).hexdigest()
    store.put(config_digest, config)
    layers = {step.digest: step.descriptor() for step in steps.values() if not step.empty}
    manifest = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "artifactType": CACHE_ARTIFACT,
        "config": {"mediaType": CACHE_CONFIG, "digest": config_digest, "size": len(config)},
        "layers": [layers[digest] for digest in sorted(layers)],
    }
    body = json.dumps(manifest, separators=(",", ":")).encode()
    pusher = Pusher(transport, reference)
    return run_transfer(lambda: pusher.push_image(body, local_source(store), None, reference.tag or "latest"))


class RemoteCache:
    """An exported cache, read once; a hit's layer is downloaded and unpacked when it is hit."""

    def __init__(self, store: ContentStore, reference: Reference, transport: Transport) -> None:
        remote = Remote(transport, reference)
        body, _, _ = remote.fetch_manifest(reference.identifier)
        manifest = loads(body)
        config = manifest.get("config") if isinstance(manifest, dict) else None
        if not isinstance(config, dict) or config.get("mediaType") != CACHE_CONFIG:
            raise CacheTransferError(f"{reference.familiar()} is not a build cache pier exported")
        if int(config.get("size", 0)) > MAX_CACHE_CONFIG:
            raise CacheTransferError(f"{reference.familiar()}: its cache index is too large")
        puller = Puller(store, remote)
        puller.fetch_blob(config["digest"], int(config["size"]))  # verified against its digest
        try:
            document = loads(store.read(config["digest"]))
            steps = document["steps"] if isinstance(document, dict) else None
            if not isinstance(steps, dict):
                raise ValueError("no steps")
            self.steps = {str(key): CachedStep(**value) for key, value in steps.items()}
        except (ValueError, TypeError, KeyError, AttributeError):
            raise CacheTransferError(f"{reference.familiar()}: its cache index is malformed") from None
        self.puller = puller
        self.reference = reference

    def get(self, key: str) -> CachedStep | None:
        step = self.steps.get(key)
        if step is None:
            return None
        if not step.empty:
            self.puller.fetch_layer(step.descriptor(), step.diff_id)
        return step
