"""Media types of the documents and blobs pier reads and writes: OCI's and docker's v2."""

from __future__ import annotations

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER = "application/vnd.oci.image.layer.v1.tar"  # +gzip, +zstd when compressed
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_MANIFEST_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
DOCKER_CONFIG = "application/vnd.docker.container.image.v1+json"

IMAGE_TYPES = frozenset({OCI_MANIFEST, DOCKER_MANIFEST})  # a manifest: config and layers
INDEX_TYPES = frozenset({OCI_INDEX, DOCKER_MANIFEST_LIST})  # an index: one manifest per platform
MANIFEST_TYPES = IMAGE_TYPES | INDEX_TYPES  # what a registry stores under /manifests/
IMAGE_CONFIGS = frozenset({OCI_CONFIG, DOCKER_CONFIG})  # the config of a runnable image, not an artifact

# The Accept of a manifest request: every type pier understands, the index first.
MANIFEST_ACCEPT = ", ".join([OCI_INDEX, OCI_MANIFEST, DOCKER_MANIFEST_LIST, DOCKER_MANIFEST])
