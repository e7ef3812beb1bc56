"""The build cache: what each step made, found again by what went into it.

A step's key is a sha256 over its parent's key, the instruction as evaluated (variables
expanded, build args in scope, no secret values), and for ``COPY``/``ADD`` the digest of
the content it copies. Keys chain, so a change invalidates every step after it and none
before. An entry names the layer the step made (its blob in the content store, its
directory in the layer store) and when; an entry whose blob is gone is a miss.

    <home>/build-cache/steps/<key>.json    one entry per step that made (or made no) layer
    <home>/build-cache/mounts/<id>/         RUN --mount=type=cache directories
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import shutil
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

from ..store.content_store import ContentStore

CACHE_MANIFEST_TYPE = "application/vnd.pier.build.cache.v1+json"


def step_key(parent: str, *parts: str) -> str:
    """The next key of a chain: unambiguous whatever the parts hold (they are JSON-encoded)."""
    return hashlib.sha256(json.dumps([parent, *parts]).encode()).hexdigest()


@dataclass(frozen=True)
class CachedStep:
    created: str  # RFC 3339: reused on a hit, so a rebuild with no change is the same image
    diff_id: str = ""  # empty: the step changed no file
    digest: str = ""
    size: int = 0
    media_type: str = ""

    @property
    def empty(self) -> bool:
        return not self.diff_id

    def descriptor(self) -> dict:
        return {"mediaType": self.media_type, "digest": self.digest, "size": self.size}


class BuildCache:
    def __init__(self, home: Path) -> None:
        self.root = Path(home) / "build-cache"
        self.steps = self.root / "steps"

    def get(self, key: str, store: ContentStore) -> CachedStep | None:
        try:
            step = CachedStep(**json.loads((self.steps / f"{key}.json").read_text()))
        except (OSError, ValueError, TypeError):
            return None
        if not step.empty and not store.has(step.digest):
            return None  # pruned: the step runs again
        return step

    def put(self, key: str, step: CachedStep) -> None:
        """Written last, atomically: a step killed before this line is simply not cached."""
        self.steps.mkdir(parents=True, exist_ok=True)
        target = self.steps / f"{key}.json"
        temporary = target.with_name(f".{key}.{os.getpid()}.tmp")
        temporary.write_text(json.dumps(asdict(step)))
        os.replace(temporary, target)

    def entries(self) -> Iterator[tuple[str, CachedStep]]:
        if not self.steps.is_dir():
            return
        for path in sorted(self.steps.glob("*.json")):
            with contextlib.suppress(OSError, ValueError, TypeError):
                yield path.stem, CachedStep(**json.loads(path.read_text()))

    def kept(self) -> tuple[set[str], set[str]]:
        """The blobs and layers the cache names: a prune keeps them unless told to drop the cache."""
        blobs, layers = set(), set()
        for _, step in self.entries():
            if not step.empty:
                blobs.add(step.digest)
                layers.add(step.diff_id)
        return blobs, layers

    def clear(self) -> int:
        """Forget every step, and drop the cache mounts and the context hashes; the steps' count."""
        count = 0
        for path in self.steps.glob("*.json") if self.steps.is_dir() else []:
            path.unlink(missing_ok=True)
            count += 1
        for directory in ("mounts", "context", "memo"):
            shutil.rmtree(self.root / directory, ignore_errors=True)
        return count

    def recall(self, question: str) -> str | None:
        """A remembered answer (the content digest of a stage's files, by the stage's key)."""
        try:
            return (self.root / "memo" / hashlib.sha256(question.encode()).hexdigest()).read_text()
        except OSError:
            return None

    def remember(self, question: str, answer: str) -> None:
        memo = self.root / "memo"
        memo.mkdir(parents=True, exist_ok=True)
        target = memo / hashlib.sha256(question.encode()).hexdigest()
        temporary = target.with_name(f".{target.name}.{os.getpid()}")
        temporary.write_text(answer)
        os.replace(temporary, target)

    def lock_mount(self, cache_id: str) -> int:
        """Hold a cache mount for one step (``sharing=locked``): close the descriptor to let go."""
        name = hashlib.sha256(cache_id.encode()).hexdigest()[:32]
        locks = self.root / "mounts" / ".locks"
        locks.mkdir(parents=True, exist_ok=True)
        fd = os.open(locks / name, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        fcntl.flock(fd, fcntl.LOCK_EX)
        return fd

    def mount_directory(self, cache_id: str) -> Path:
        """A RUN cache mount's directory, named by a hash of its id (any text, never a path)."""
        name = hashlib.sha256(cache_id.encode()).hexdigest()[:32]
        directory = self.root / "mounts" / name
        directory.mkdir(parents=True, exist_ok=True)
        return directory
