"""Where everything lives in storage. The whole layout, in one place:

    blobs/<alg>/<hex[:2]>/<hex>/data              content, stored once (layers, configs, manifests)
    repositories/<name>/_layers/<alg>/<hex>/link   blob linked into a repository
    repositories/<name>/_manifests/revisions/<alg>/<hex>/link
                                                   manifest in a repository; holds its media type
    repositories/<name>/_manifests/tags/<tag>/current/link
                                                   the digest a tag points to
    repositories/<name>/_referrers/<alg>/<hex>/<alg>-<hex>
                                                   descriptor (JSON) of a manifest whose subject
                                                   is <alg>:<hex>
    repositories/<name>/_pulled/<alg>/<hex>        a mirror's cached manifest: its mtime is when
                                                   it was last pulled (least-recently-pulled
                                                   eviction)
    repositories/<name>/_uploads/<id>              marker of an open upload session (counted
                                                   against the per-repository limit)
    _uploads/<id>/data                             bytes of an open upload session
    _uploads/<id>/info                             its repository, client and start time (JSON)
    _uploads/_clients/<client>/<id>                marker of an open upload session, counted
                                                   against its client's and the store's limits
                                                   (<client>: a hash of the user or address)
    _gc/doomed/<run>                               written by ``pier gc`` before it deletes: the
                                                   digests it may delete, one per line; a manifest
                                                   PUT referencing one of them (marker younger than
                                                   DOOMED_MARKER_LIFETIME) is refused, so the
                                                   client pushes it again
    _gc/swept                                      the id of the last GC run that swept, written
                                                   after its deletes and before its marker goes: a
                                                   manifest PUT that sees it change checks again
    _gc/totals                                     runs and bytes freed by every GC run on this
                                                   store (JSON), for /metrics
    _quarantine/<alg>/<hex>/data                   a corrupt blob moved aside by ``pier fsck
                                                   --repair``, never served again
    _quarantine/<alg>/<hex>/note.json              its actual digest and when it was moved
    _health/probe, _health/space                   small writes of /readyz: a mirror's cache takes
                                                   writes; a store that was full has room again

A repository exists once it has a ``_manifests`` or ``_layers`` folder. Every file is
written atomically by the backend; content is immutable once committed. Names, tags,
digests and upload ids are validated before they reach these functions.
"""

from __future__ import annotations

from collections.abc import Iterable

from .references import Digest

BLOBS = "blobs"
REPOSITORIES = "repositories"
UPLOADS = "_uploads"
UPLOAD_CLIENTS = "_uploads/_clients"  # not a session: its name is no upload id
GC_DOOMED = "_gc/doomed"
GC_TOTALS = "_gc/totals"
GC_SWEPT = "_gc/swept"
HEALTH_PROBE = "_health/probe"  # written by a mirror's readiness check: its cache takes writes
SPACE_PROBE = "_health/space"  # written by /readyz after a write failed for lack of space
QUARANTINE = "_quarantine"
# A doomed marker older than this is a leftover of a crashed GC: servers ignore it, GC removes it.
DOOMED_MARKER_LIFETIME = 3600.0


def blob_data(digest: Digest) -> str:
    return f"{BLOBS}/{digest.algorithm}/{digest.hex[:2]}/{digest.hex}/data"


def blob_dir(digest: Digest) -> str:
    return f"{BLOBS}/{digest.algorithm}/{digest.hex[:2]}/{digest.hex}"


def repository(name: str) -> str:
    return f"{REPOSITORIES}/{name}"


def layer_link(name: str, digest: Digest) -> str:
    return f"{REPOSITORIES}/{name}/_layers/{digest.algorithm}/{digest.hex}/link"


def layers_dir(name: str) -> str:
    return f"{REPOSITORIES}/{name}/_layers"


def revisions_dir(name: str) -> str:
    return f"{REPOSITORIES}/{name}/_manifests/revisions"


def referrers_root(name: str) -> str:
    return f"{REPOSITORIES}/{name}/_referrers"


def revision_link(name: str, digest: Digest) -> str:
    return f"{REPOSITORIES}/{name}/_manifests/revisions/{digest.algorithm}/{digest.hex}/link"


def tags_dir(name: str) -> str:
    return f"{REPOSITORIES}/{name}/_manifests/tags"


def tag_dir(name: str, tag: str) -> str:
    return f"{tags_dir(name)}/{tag}"


def tag_link(name: str, tag: str) -> str:
    return f"{tag_dir(name, tag)}/current/link"


def referrers_dir(name: str, subject: Digest) -> str:
    return f"{REPOSITORIES}/{name}/_referrers/{subject.algorithm}/{subject.hex}"


def referrer_entry(name: str, subject: Digest, referrer: Digest) -> str:
    return f"{referrers_dir(name, subject)}/{referrer.algorithm}-{referrer.hex}"


def pulled_marker(name: str, digest: Digest) -> str:
    return f"{REPOSITORIES}/{name}/_pulled/{digest.algorithm}/{digest.hex}"


def upload_dir(upload_id: str) -> str:
    return f"{UPLOADS}/{upload_id}"


def upload_data(upload_id: str) -> str:
    return f"{UPLOADS}/{upload_id}/data"


def upload_info(upload_id: str) -> str:
    return f"{UPLOADS}/{upload_id}/info"


def upload_markers(name: str) -> str:
    return f"{REPOSITORIES}/{name}/_uploads"


def upload_marker(name: str, upload_id: str) -> str:
    return f"{REPOSITORIES}/{name}/_uploads/{upload_id}"


def client_markers(client: str) -> str:
    return f"{UPLOAD_CLIENTS}/{client}"


def client_marker(client: str, upload_id: str) -> str:
    return f"{UPLOAD_CLIENTS}/{client}/{upload_id}"


def doomed_marker(run: str) -> str:
    return f"{GC_DOOMED}/{run}"


def encode_doomed(digests: Iterable[Digest]) -> bytes:
    """One file per GC run, not one per digest: written and removed in one request each."""
    return "".join(f"{digest}\n" for digest in digests).encode()


def decode_doomed(body: bytes) -> frozenset[str]:
    return frozenset(line for line in body.decode(errors="replace").splitlines() if line)


def quarantine_dir(digest: Digest) -> str:
    return f"{QUARANTINE}/{digest.algorithm}/{digest.hex}"


def quarantine_data(digest: Digest) -> str:
    return f"{quarantine_dir(digest)}/data"


def quarantine_note(digest: Digest) -> str:
    return f"{quarantine_dir(digest)}/note.json"
