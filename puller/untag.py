"""What ``pier rmi`` removes, and what it refuses to without ``-f``, as docker's ``rmi`` does.

An image is named by a tag (``repo:tag``), by ``repo@digest`` (every tag of that
repository pointing at it), or by a bare digest as ``pier images -q`` prints it, or its
first 12 or more hex digits (every tag pointing at it). Without ``--force`` the removal
is refused when a container (running or stopped) was made from the image and no other
tag would keep it, or when a bare digest is tagged in more than one repository.
"""

from __future__ import annotations

from dataclasses import dataclass

from oci.digest import full_prefix

from .reference import DEFAULT_TAG, parse_reference
from .run.containers import Containers
from .store.content_store import ContentStore
from .store.image import ImageError, reachable


@dataclass
class Removal:
    shown: str  # as the user wrote it
    digest: str
    tags: list[tuple[str, str]]  # (name, tag) to delete
    by_digest: bool


def _by_digest(store: ContentStore, text: str) -> Removal | None:
    prefix = full_prefix(text)
    if prefix is None:
        return None
    digests = sorted({digest for _, _, digest in store.refs() if digest.startswith(prefix)})
    if len(digests) > 1:
        raise ImageError(f"{text} is ambiguous: it starts {len(digests)} image digests")
    if not digests:
        return None
    tags = [(name, tag) for name, tag, digest in store.refs() if digest == digests[0]]
    return Removal(text, digests[0], tags, True)


def resolve(store: ContentStore, text: str) -> Removal:
    """The tags ``text`` names in the local store; an error when it names none."""
    found = _by_digest(store, text)
    if found is not None:
        return found
    reference = parse_reference(text)
    if reference.digest and not reference.tag:
        tags = [(n, t) for n, t, d in store.refs() if d == reference.digest and n == reference.name]
        found = Removal(reference.familiar(), reference.digest, tags, True)
    else:
        tag = reference.tag or DEFAULT_TAG
        digest = store.get_ref(reference.name, tag)
        found = Removal(reference.familiar(), digest or "", [(reference.name, tag)] if digest else [], False)
    if not found.tags:
        raise ImageError(f"{reference.familiar()}: no such image in the local store")
    return found


def conflict(store: ContentStore, removal: Removal) -> str | None:
    """Why docker would refuse this removal without ``-f``; None when it would not."""
    repositories = sorted({name for name, _ in removal.tags})
    if removal.by_digest and len(repositories) > 1:
        return (
            f"{removal.shown} is tagged in several repositories ({', '.join(repositories)}): "
            "remove the tags one by one, or use -f"
        )
    removed = set(removal.tags)
    if any(d == removal.digest and (n, t) not in removed for n, t, d in store.refs()):
        return None  # another tag keeps the image
    contents = set(reachable(store, removal.digest)) | {removal.digest}
    for _, state in Containers(store.root).all():
        if state.digest in contents:
            return f"container {state.id} uses {removal.shown}: pier rm {state.id} first, or use -f"
    return None
