"""What pier knows of the files it pushed or pulled: (path, size, mtime, ctime, inode) -> digest.

Like git's index, it lets a re-push of a 20 GB model directory skip hashing every file
whose stat is unchanged. ``ctime`` is in the key because no one can set it: a file
rewritten with its old mtime restored still misses. An entry whose hashing began within
one timestamp tick of the file's last change is not trusted (git's "racily clean"
problem: a write in the same tick as the hash keeps size and times), so such a file is
hashed again next time. The tick is taken as 2 s on filesystems that keep whole seconds.

Stored as one JSON file in the pier home, replaced atomically, merged under a lock so
two pushes at once lose neither's entries.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path

COARSE_TICK = 2.0  # FAT keeps 2 s, ext3 1 s
FINE_TICK = 0.05  # ext4, xfs, btrfs: the kernel's coarse clock, a few ms
HASH_BLOCK = 4 << 20
MAX_HOLDERS = 8
MAX_BLOBS = 50_000  # digests whose holders are remembered, the most recently seen


def stat_key(info: os.stat_result) -> list[int]:
    return [info.st_size, info.st_mtime_ns, info.st_ctime_ns, info.st_ino, info.st_dev]


def hash_file(path: Path, expected_size: int | None = None) -> tuple[str, int]:
    """(sha256 digest, size) of a file, read in large blocks (hashlib releases the GIL on them)."""
    digest = hashlib.sha256()
    size = 0
    with open(path, "rb", buffering=0) as stream:
        buffer = bytearray(HASH_BLOCK)
        view = memoryview(buffer)
        while count := stream.readinto(buffer):
            digest.update(view[:count])
            size += count
    if expected_size is not None and size != expected_size:
        raise OSError(f"{path} changed size while it was read ({expected_size} -> {size} bytes)")
    return f"sha256:{digest.hexdigest()}", size


class FileIndex:
    def __init__(self, home: Path) -> None:
        self.path = Path(home) / "artifacts" / "file-index.json"
        self._entries: dict[str, dict] = {}
        self._added: dict[str, dict] = {}
        self._blobs: dict[str, list[str]] = {}  # digest -> "domain/repository" seen holding it
        self._seen: dict[str, list[str]] = {}
        self._mutex = threading.Lock()  # pulls record from several threads, and save while they do
        self._load()

    def _load(self) -> None:
        try:
            loaded = json.loads(self.path.read_text())
        except (OSError, ValueError):
            loaded = {}
        loaded = loaded if isinstance(loaded, dict) else {}
        files, blobs = loaded.get("files"), loaded.get("blobs")
        self._entries = files if isinstance(files, dict) else {}
        self._blobs = blobs if isinstance(blobs, dict) else {}

    def seen(self, digest: str, domain: str, repository: str) -> None:
        """Remember a repository that holds a blob: a push of it elsewhere on that registry mounts it."""
        place = f"{domain}/{repository}"
        with self._mutex:
            places = self._seen.setdefault(digest, [])
            if place not in places:
                places.append(place)

    def holders(self, digest: str, domain: str) -> list[str]:
        """Repositories of ``domain`` pier saw holding ``digest``, most recent first."""
        places = [*self._seen.get(digest, []), *reversed(self._blobs.get(digest) or [])]
        found = []
        for place in places:
            place_domain, _, repository = str(place).partition("/")
            if place_domain == domain and repository not in found:
                found.append(repository)
        return found[:MAX_HOLDERS]

    def lookup(self, path: Path, info: os.stat_result) -> str | None:
        """The digest recorded for this exact file state, or None (unknown, changed, or racy)."""
        entry = self._added.get(str(path)) or self._entries.get(str(path))
        if not isinstance(entry, dict) or entry.get("stat") != stat_key(info):
            return None
        changed = max(info.st_mtime_ns, info.st_ctime_ns)
        tick = COARSE_TICK if changed % 1_000_000_000 == 0 else FINE_TICK
        if entry.get("since", 0) - changed / 1e9 < tick:
            return None
        digest = entry.get("digest")
        return digest if isinstance(digest, str) else None

    def record(self, path: Path, info: os.stat_result, digest: str, since: float | None = None) -> None:
        """``since``: when reading the bytes began; None for a file pier itself just wrote and verified."""
        if since is None:
            since = max(info.st_mtime_ns, info.st_ctime_ns) / 1e9 + COARSE_TICK
        with self._mutex:
            self._added[str(path)] = {"stat": stat_key(info), "digest": digest, "since": since}

    def digest_of(self, path: Path) -> tuple[str, os.stat_result, bool]:
        """(digest, stat, whether it was hashed now): from the index when the stat matches, else hashed."""
        info = path.stat()
        known = self.lookup(path, info)
        if known is not None:
            return known, info, False
        since = time.time()
        digest, _ = hash_file(path, info.st_size)
        if stat_key(path.stat()) == stat_key(info):
            self.record(path, info, digest, since)
        return digest, info, True

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path.parent / ".file-index.lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)

    def save(self, prune: bool = True) -> None:
        """Merge this run's entries into the file (also midway through a pull, so a killed pull
        keeps what it finished); ``prune`` drops entries of files that no longer exist."""
        with self._mutex:
            if not self._added and not self._seen:
                return
            with self._locked():
                self._load()
                self._entries.update(self._added)
                if prune:
                    for name in [name for name in self._entries if not os.path.lexists(name)]:
                        del self._entries[name]
                for digest, places in self._seen.items():
                    known = [p for p in self._blobs.pop(digest, None) or [] if p not in places]
                    self._blobs[digest] = (known + places)[-MAX_HOLDERS:]  # popped first: now the newest
                for digest in list(self._blobs)[: max(0, len(self._blobs) - MAX_BLOBS)]:
                    del self._blobs[digest]  # the oldest seen: a mount is an optimisation, not a record
                temporary = self.path.with_name(f".{self.path.name}.{os.getpid()}")
                document = {"files": self._entries, "blobs": self._blobs}
                temporary.write_text(json.dumps(document, separators=(",", ":")))
                os.replace(temporary, self.path)
            self._added.clear()
            self._seen.clear()
