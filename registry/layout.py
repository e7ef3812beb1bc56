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
    _events/<endpoint>/<batch>                     webhook events not yet delivered to <endpoint>
                                                   (JSON lines; <batch>: time_ns-random, so names
                                                   sort in arrival order)
    _events/<endpoint>.lease                       which replica delivers <endpoint>'s events, and
                                                   until when (JSON)
    _audit/<day>/<batch>                           the audit log: who pushed, moved, deleted, failed
                                                   to log in, and what policies did (JSON lines;
                                                   <day>: YYYY-MM-DD in UTC, <batch>: time_ns-random)
    _stats/pulls/<process>                         pull counts and last pulls per tag and digest,
                                                   cumulative, written every few seconds by each
                                                   server process (JSON); readers add them up
    _retention/last-run                            when a scheduled retention run last started
                                                   (JSON), so replicas take turns

A repository exists once it has a ``_manifests`` or ``_layers`` folder; the folders of its
name's components hold no ``_`` names of their own. Every file is written atomically by the
backend; content is immutable once committed. Names, tags, digests and upload ids are
validated before they reach these functions. Names starting with ``.`` are the backends'
own (temporary files, S3's segments) and never part of the layout.

Every path the registry stores or reads is built here, and every stored path the registry
reads back (GC's and fsck's walks) is parsed here: no other module spells a folder name.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from .errors import RegistryError
from .references import ALGORITHMS, Digest

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
EVENTS = "_events"
AUDIT = "_audit"
PULL_STATS = "_stats/pulls"
RETENTION_LAST_RUN = "_retention/last-run"
# What makes a folder under repositories/ a repository rather than a prefix of other names.
REPOSITORY_MARKERS = ("_manifests", "_layers")
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


def layer_dir(name: str, digest: Digest) -> str:
    """The folder of a layer link: deleting it unlinks the blob from the repository."""
    return f"{REPOSITORIES}/{name}/_layers/{digest.algorithm}/{digest.hex}"


def layers_dir(name: str) -> str:
    return f"{REPOSITORIES}/{name}/_layers"


def revisions_dir(name: str) -> str:
    return f"{REPOSITORIES}/{name}/_manifests/revisions"


def referrers_root(name: str) -> str:
    return f"{REPOSITORIES}/{name}/_referrers"


def revision_dir(name: str, digest: Digest) -> str:
    """The folder of a revision link: deleting it removes the manifest from the repository."""
    return f"{REPOSITORIES}/{name}/_manifests/revisions/{digest.algorithm}/{digest.hex}"


def revision_link(name: str, digest: Digest) -> str:
    return f"{revision_dir(name, digest)}/link"


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


def repository_contents(name: str) -> list[str]:
    """The folders that make ``name`` a repository: deleting them deletes it, and nothing of
    the repositories nested under its name, nor its open upload sessions."""
    return [f"{REPOSITORIES}/{name}/{part}" for part in (*REPOSITORY_MARKERS, "_referrers", "_pulled")]


def child(folder: str, entry: str) -> str:
    """The path of ``entry``, a name ``StorageDriver.list_children(folder)`` returned."""
    return f"{folder}/{entry}" if folder else entry


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


def marker_upload_id(marker: str) -> str:
    """The upload id a session marker (``upload_marker``, ``client_marker``) stands for."""
    return marker.rsplit("/", 1)[-1]


def is_upload_info(path: str) -> bool:
    """``path`` (found under ``UPLOADS``) is a session's info file: one per open session."""
    return path.startswith(f"{UPLOADS}/") and path.endswith("/info")


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


def event_queue(endpoint: str) -> str:
    return f"{EVENTS}/{endpoint}"


def event_batch(endpoint: str, batch: str) -> str:
    return f"{EVENTS}/{endpoint}/{batch}"


def event_lease(endpoint: str) -> str:
    return f"{EVENTS}/{endpoint}.lease"


def audit_day(day: str) -> str:
    return f"{AUDIT}/{day}"


def audit_batch(day: str, batch: str) -> str:
    return f"{AUDIT}/{day}/{batch}"


def pull_stats(process: str) -> str:
    return f"{PULL_STATS}/{process}"


# -- repositories, as their folders list ------------------------------------------------


def repositories_folder(prefix: str) -> str:
    """The folder of a repository name or of a prefix of names (``""``: all of them)."""
    return repository(prefix) if prefix else REPOSITORIES


def is_repository(children: Iterable[str]) -> bool:
    """The children of a folder under ``repositories/`` make it a repository."""
    return any(marker in children for marker in REPOSITORY_MARKERS)


def is_name_component(entry: str) -> bool:
    """A child of a folder under ``repositories/`` that may continue a repository name."""
    return not entry.startswith("_")


# -- stored paths, parsed back ------------------------------------------------------------


def parse_digest(algorithm: str, hexpart: str) -> Digest | None:
    try:
        return Digest.parse(f"{algorithm}:{hexpart}")
    except RegistryError:
        return None  # a stray file: not ours to judge


def parse_blob_data(path: str) -> Digest | None:
    """The digest whose ``blob_data`` is ``path``, or None for anything else below ``blobs/``."""
    parts = path.split("/")
    if len(parts) != 5 or parts[0] != BLOBS or parts[4] != "data" or parts[1] not in ALGORITHMS:
        return None
    digest = parse_digest(parts[1], parts[3])
    return digest if digest is not None and digest.hex[:2] == parts[2] else None


@dataclass(frozen=True)
class RepositoryFile:
    """A file under ``repositories/``, as the layout names it.

    ``kind``: ``layer``, ``revision`` (``digest``: whose link; None when the folder is no
    digest), ``tag`` (``tag``), ``referrer`` (``subject`` and ``digest``: the referrer; either
    None when unparsable), ``pulled`` (``digest``), or ``other`` (upload markers, strays).
    """

    repository: str
    kind: str
    digest: Digest | None = None
    subject: Digest | None = None
    tag: str = ""


def parse_repository_file(path: str) -> RepositoryFile | None:
    """What a file found below ``repositories/`` is; None when it is in no repository."""
    parts = path.split("/")[1:]
    split = next((i for i, part in enumerate(parts) if part.startswith("_")), 0)
    if split == 0:
        return None
    name, rest = "/".join(parts[:split]), parts[split:]
    match rest:
        case ["_layers", algorithm, hexpart, "link"]:
            return RepositoryFile(name, "layer", parse_digest(algorithm, hexpart))
        case ["_manifests", "revisions", algorithm, hexpart, "link"]:
            return RepositoryFile(name, "revision", parse_digest(algorithm, hexpart))
        case ["_manifests", "tags", tag, "current", "link"]:
            return RepositoryFile(name, "tag", tag=tag)
        case ["_referrers", algorithm, hexpart, entry] if "-" in entry:
            referrer = parse_digest(*entry.split("-", 1))
            return RepositoryFile(name, "referrer", referrer, subject=parse_digest(algorithm, hexpart))
        case ["_pulled", algorithm, hexpart]:
            return RepositoryFile(name, "pulled", parse_digest(algorithm, hexpart))
        case _:
            return RepositoryFile(name, "other")
