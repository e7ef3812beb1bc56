"""The build context: what COPY/ADD may read, and the cache key of what they read.

Everything is read through the context root as through a chroot: a source path is cleaned with '/'
as the context root (``../../etc/passwd`` and ``/etc/passwd`` both mean ``etc/passwd`` inside the
context, as buildkit's ``path.Join("/", src)`` does), and symlinks met on the way are followed within
the context (an absolute target starts at the context root, ``..`` stops at it: containerd's
``fs.RootPath``, which buildkit uses). Every component is lstat'ed; nothing outside the root is read.
Files the ``.dockerignore`` excludes are invisible, as if the context had not been sent with them.

Types (frozen dataclasses):

``Source(arg, path)``
    One COPY/ADD argument: ``arg`` as given, ``path`` cleaned relative to the root ('.' is the root,
    glob characters kept); ``wildcard`` tells whether it is a glob.
``Match(source, path, resolved, is_dir)``
    What a source selects: ``path`` is the context path as written or as the glob matched it (the
    copy of a file is named ``name``, its base name); ``resolved`` is where it leads once symlinks are
    followed (what is read); ``is_dir``: a directory's contents are copied, not the directory.
``Entry(path, dest, stat, link)``
    One thing a match copies: ``path`` in the context, ``dest`` relative to the destination (for a
    directory match relative to that directory; for a file match its ``name``), ``stat`` its lstat,
    ``link`` the target of a symlink (never followed) else None. ``kind`` is 'dir', 'file',
    'symlink' or 'other'; ``mode`` the permission bits. Read a file's bytes with ``BuildContext.open``.

``BuildContext(root, dockerfile_name="Dockerfile", cache_dir=None)``: ``dockerfile_name`` is relative
to the root or absolute; ``<dockerfile>.dockerignore`` next to it wins over the root's
``.dockerignore``. ``cache_dir`` holds ``context-<hash of root>.json``, content hashes keyed by
(path, size, mtime_ns, inode, ctime_ns) so a second ``digest`` reads no unchanged file.
"""

from __future__ import annotations

import bz2
import gzip
import hashlib
import io
import json
import lzma
import os
import posixpath
import re
import stat as st_
import tarfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, NamedTuple

from ..errors import PierError

_MAX_LINKS = 255  # containerd's fs.RootPath limit
_RACY_NS = 2_000_000_000  # a hash is cached only for a file unchanged for this long before it was read
_GLOB_META = "*?[]\\"
_KINDS = {st_.S_IFDIR: "dir", st_.S_IFREG: "file", st_.S_IFLNK: "symlink"}


class ContextError(PierError):
    """A COPY/ADD source or a .dockerignore the build context cannot satisfy."""


def _go_clean(path: str) -> str:
    """Go's path.Clean ('//a' is '/a', unlike posixpath.normpath)."""
    cleaned = posixpath.normpath(path)
    return cleaned[1:] if cleaned.startswith("//") else cleaned


def _class(pat: str, i: int, strict: bool) -> tuple[str, int]:
    """A Go filepath.Match character class starting after its '[' -> (regex, index after ']')."""

    def esc(i: int) -> tuple[str, int]:  # Go's getEsc
        if i >= len(pat) or pat[i] in "-]":
            raise ValueError("bad character class")
        if pat[i] == "\\":
            i += 1
            if i >= len(pat):
                raise ValueError("bad escape")
        if i + 1 >= len(pat):
            raise ValueError("unterminated character class")
        return pat[i], i + 1

    negated = i < len(pat) and pat[i] == "^"
    i += negated
    items, count = [], 0
    while not (i < len(pat) and pat[i] == "]" and count):
        lo, i = esc(i)
        hi = lo
        if pat[i] == "-":
            hi, i = esc(i + 1)
        if lo > hi and strict:  # moby compiles to a Go regexp, which refuses it
            raise ValueError("character class range runs backwards")
        if lo <= hi:
            items.append(re.escape(lo) + ("-" + re.escape(hi) if hi != lo else ""))
        count += 1
    if not items:  # only backwards ranges: Go matches nothing (or, negated, any character)
        return ("(?s:.)" if negated else "(?!)"), i + 1
    return "[" + "^" * negated + "".join(items) + "]", i + 1


def _translate(pat: str, doublestar: bool) -> str:
    """Go filepath.Match syntax (with moby's '**' for .dockerignore) -> a regex; ValueError if malformed."""
    out, i = [], 0
    while i < len(pat):
        ch = pat[i]
        i += 1
        if ch == "*" and doublestar and pat[i : i + 1] == "*":
            i += 1 + (pat[i + 1 : i + 2] == "/")
            out.append(".*" if i >= len(pat) else "(?:.*/)?")
        elif ch == "*":
            out.append("[^/]*")
        elif ch == "?":
            out.append("[^/]")
        elif ch == "\\":
            if i >= len(pat):
                raise ValueError("trailing backslash")
            out.append(re.escape(pat[i]))
            i += 1
        elif ch == "[":
            regex, i = _class(pat, i, doublestar)
            out.append(regex)
        else:
            out.append(re.escape(ch))
    return "".join(out)


def _has_wildcards(name: str) -> bool:
    """buildkit's containsWildcards: '*', '?' or '[' not escaped by a backslash."""
    i = 0
    while i < len(name):
        if name[i] == "\\":
            i += 1
        elif name[i] in "*?[":
            return True
        i += 1
    return False


class _Pattern(NamedTuple):
    exclusion: bool
    text: str
    match: Callable[[str], bool]
    prefix: str  # the text without a trailing '/**' or '/*' (fsutil's patternWithoutTrailingGlob)


def _pattern(text: str, exclusion: bool) -> _Pattern:
    try:
        regex = re.compile(_translate(text, doublestar=True))
    except (ValueError, re.error) as error:
        raise ContextError(
            f"invalid .dockerignore pattern {('!' if exclusion else '') + text!r}: {error}"
        ) from None
    suffix = text[2:]

    def suffix_match(path: str) -> bool:  # moby's suffixMatch: "**.go" matches any path ending in ".go"
        return path.endswith(suffix) or (suffix[:1] == "/" and path == suffix[1:])

    def regex_match(path: str) -> bool:
        return regex.fullmatch(path) is not None

    match: Callable[[str], bool] = regex_match
    if not any(ch in text for ch in _GLOB_META):
        match = text.__eq__
    elif text.startswith("**") and not any(ch in suffix for ch in _GLOB_META):
        match = suffix_match
    prefix = text.removesuffix("/**").removesuffix("/*")
    return _Pattern(exclusion, text, match, prefix)


class IgnorePatterns:
    """docker's .dockerignore rules (moby/patternmatcher, applied as fsutil's walker applies them)."""

    def __init__(self, patterns: list[_Pattern]) -> None:
        self._patterns = patterns
        self.patterns = tuple(("!" if p.exclusion else "") + p.text for p in patterns)
        self._exceptions = [p for p in patterns if p.exclusion]
        # fsutil skips an excluded directory unless an exception could match inside it
        self._prefix_only = not any(ch in p.prefix for p in self._exceptions for ch in "*[]?^\\")

    @classmethod
    def parse(cls, text: str) -> IgnorePatterns:
        patterns = []
        for number, line in enumerate(text.split("\n")):
            line = line.removesuffix("\r")
            if number == 0:
                line = line.removeprefix("\ufeff")
            if line.startswith("#") or not line.strip():
                continue
            line = line.strip()
            exclusion = line.startswith("!")
            pattern = line[1:].strip() if exclusion else line
            if not pattern:
                raise ContextError('invalid .dockerignore pattern "!": an exception needs a pattern')
            pattern = _go_clean(pattern)
            if len(pattern) > 1 and pattern.startswith("/"):
                pattern = pattern[1:]
            patterns.append(_pattern(pattern, exclusion))
        return cls(patterns)

    def __bool__(self) -> bool:
        return bool(self._patterns)

    def _eval(self, path: str, parent: tuple[bool, ...]) -> tuple[bool, tuple[bool, ...]]:
        """patternmatcher's MatchesUsingParentResults: (excluded, what each pattern matched)."""
        matched, vector = False, []
        for i, pattern in enumerate(self._patterns):
            hit = bool(parent) and parent[i]
            if not hit:
                if pattern.exclusion != matched:
                    vector.append(False)
                    continue
                hit = pattern.match(path)
            vector.append(hit)
            if hit:
                matched = not pattern.exclusion
        return matched, tuple(vector)

    def _descends(self, directory: str) -> bool:
        """Whether the walk enters an excluded directory: an exception might re-include inside it."""
        if not self._exceptions:
            return False
        return not self._prefix_only or any(
            (p.prefix + "/").startswith(directory + "/") for p in self._exceptions
        )

    def _state(self, path: str) -> tuple[bool, bool, tuple[bool, ...]]:
        """(excluded, hidden by an excluded ancestor the walk does not enter, match vector) of a path."""
        parts, excluded = path.split("/"), False
        vector: tuple[bool, ...] = ()
        for k in range(1, len(parts) + 1):
            if excluded and not self._descends("/".join(parts[: k - 1])):
                return True, True, vector
            excluded, vector = self._eval("/".join(parts[:k]), vector)
        return excluded, False, vector

    def ignored(self, path: str) -> bool:
        """Whether ``path`` (relative to the context root, '/'-separated) is left out of the context."""
        path = _go_clean("/" + path).lstrip("/")
        if not self._patterns or not path:
            return False
        return self._state(path)[0]


@dataclass(frozen=True)
class Source:
    arg: str
    path: str

    @classmethod
    def parse(cls, arg: str) -> Source:
        return cls(arg, _go_clean("/" + arg.lstrip("/")).lstrip("/") or ".")

    @property
    def wildcard(self) -> bool:
        return _has_wildcards(self.path)


@dataclass(frozen=True)
class Match:
    source: Source
    path: str
    resolved: str
    is_dir: bool

    @property
    def name(self) -> str:
        return posixpath.basename(self.path) or "."


@dataclass(frozen=True)
class Entry:
    path: str
    dest: str
    stat: os.stat_result
    link: str | None = None

    @property
    def kind(self) -> str:
        return _KINDS.get(st_.S_IFMT(self.stat.st_mode), "other")

    @property
    def mode(self) -> int:
        return st_.S_IMODE(self.stat.st_mode)


def _join(directory: str, name: str) -> str:
    return name if directory in (".", "") else f"{directory}/{name}"


class BuildContext:
    def __init__(
        self, root: Path, dockerfile_name: str = "Dockerfile", cache_dir: Path | None = None
    ) -> None:
        try:
            self.root = Path(root).resolve(strict=True)
        except OSError as error:
            raise ContextError(f"build context {str(root)!r}: {error.strerror}") from None
        if not self.root.is_dir():
            raise ContextError(f"build context {str(root)!r} is not a directory")
        self._root = str(self.root)
        self.ignore = IgnorePatterns([])
        self._cache_file = None
        if cache_dir is not None:
            self._cache_file = (
                Path(cache_dir) / f"context-{hashlib.sha256(os.fsencode(self._root)).hexdigest()[:16]}.json"
            )
        self._hashes: dict[str, list[int | str]] | None = None
        self._dirty = False
        text = self._dockerfile_ignore(dockerfile_name)
        if text is None:
            text = self._read_inside(".dockerignore")
        if text is not None:
            self.ignore = IgnorePatterns.parse(text)

    # -- reading inside the root -------------------------------------------------------------

    def _abs(self, rel: str) -> str:
        return self._root if rel == "." else os.path.join(self._root, rel)

    def _dockerfile_ignore(self, dockerfile_name: str) -> str | None:
        path = Path(dockerfile_name)
        if path.is_absolute() and not path.is_relative_to(self.root):
            try:  # a Dockerfile named outside the context: its ignore file is the user's to name
                return Path(f"{path}.dockerignore").read_text(errors="surrogateescape")
            except OSError:
                return None
        rel = str(path.relative_to(self.root)) if path.is_absolute() else dockerfile_name
        return self._read_inside(f"{rel}.dockerignore")

    def _read_inside(self, rel: str) -> str | None:
        found = self._resolve(Source.parse(rel).path.split("/"), True, rel)
        if found is None or not st_.S_ISREG(found[1].st_mode):
            return None
        with self.open(Entry(found[0], found[0], found[1])) as file:
            return file.read().decode(errors="surrogateescape")

    def _resolve(self, parts: list[str], follow: bool, src: str) -> tuple[str, os.stat_result] | None:
        """containerd's fs.RootPath: the path as written, symlinks followed inside the root."""
        todo, done, links = list(reversed(parts)), list[str](), 0
        while todo:
            part = todo.pop()
            if part in ("", "."):
                continue
            if part == "..":
                done = done[:-1]
                continue
            rel = "/".join([*done, part])
            try:
                info = os.lstat(self._abs(rel))
            except (FileNotFoundError, NotADirectoryError):
                return None
            except OSError as error:
                raise ContextError(f"COPY source {src!r}: {error.strerror}") from None
            if st_.S_ISLNK(info.st_mode) and (todo or follow):
                links += 1
                if links > _MAX_LINKS:
                    raise ContextError(f"COPY source {src!r}: too many levels of symbolic links")
                if self.ignore.ignored(rel):
                    return None
                target = os.readlink(self._abs(rel))
                done = [] if target.startswith("/") else done
                todo.extend(reversed(target.split("/")))
                continue
            if todo and not st_.S_ISDIR(info.st_mode):
                return None
            done.append(part)
        rel = "/".join(done) or "."
        return rel, os.lstat(self._abs(rel))

    def _visible(self, rel: str, info: os.stat_result) -> bool:
        if rel == "." or not self.ignore:
            return True
        excluded, hidden, vector = self.ignore._state(rel)
        if not excluded:
            return True
        if hidden or not st_.S_ISDIR(info.st_mode) or not self.ignore._descends(rel):
            return False
        return next(self._walk_dir(rel, "", vector, []), None) is not None

    # -- COPY/ADD sources ------------------------------------------------------------------------

    def resolve(self, sources: list[str]) -> list[Match]:
        """COPY/ADD source arguments -> what they select, in order (a glob's matches sorted).

        A glob that matches nothing selects nothing, as buildkit allows (AllowEmptyWildcard); a path,
        or the directory part of a glob, that is not in the context -> ContextError.
        """
        matches: list[Match] = []
        for arg in sources:
            source = Source.parse(arg)
            parts = [] if source.path == "." else source.path.split("/")
            first = next((i for i, part in enumerate(parts) if _has_wildcards(part)), len(parts))
            if first == len(parts):
                matches.append(self._match(source, source.path))
                continue
            base = self._resolve(parts[:first], True, arg)
            if base is None or not self._visible(*base):
                raise ContextError(f"COPY source {arg!r}: no such file or directory in the build context")
            if st_.S_ISDIR(base[1].st_mode):
                matches += [self._match(source, path) for path in self._glob(base[0], parts[first:])]
        return matches

    def _match(self, source: Source, path: str) -> Match:
        found = self._resolve([] if path == "." else path.split("/"), True, source.arg)
        if found is None or not self._visible(*found):
            raise ContextError(f"COPY source {source.arg!r}: no such file or directory in the build context")
        return Match(source, path, found[0], st_.S_ISDIR(found[1].st_mode))

    def _glob(self, base: str, components: list[str]) -> list[str]:
        """buildkit's resolveWildcards: paths under ``base`` matching the components (links not entered)."""
        try:
            regexes = [re.compile(_translate(part, doublestar=False)) for part in components]
        except (ValueError, re.error):
            return []  # filepath.Match's error is ignored there: nothing matches
        level = [base]
        for depth, regex in enumerate(regexes):
            last, found = depth == len(regexes) - 1, []
            for directory in level:
                try:
                    with os.scandir(self._abs(directory)) as it:
                        names = sorted(e.name for e in it if last or e.is_dir(follow_symlinks=False))
                except OSError:
                    continue
                found += [_join(directory, name) for name in names if regex.fullmatch(name)]
            level = found
        visible = []
        for path in level:
            try:
                if self._visible(path, os.lstat(self._abs(path))):
                    visible.append(path)
            except FileNotFoundError:
                continue
        return visible

    def walk(self, match: Match) -> Iterator[Entry]:
        """The files a match copies, parents before children, each directory's names sorted."""
        if not match.is_dir:
            try:
                yield Entry(match.resolved, match.name, os.lstat(self._abs(match.resolved)))
            except OSError as error:
                raise ContextError(f"COPY source {match.source.arg!r}: {error.strerror}") from None
            return
        vector = self.ignore._state(match.resolved)[2] if self.ignore and match.resolved != "." else ()
        yield from self._walk_dir(match.resolved, "", vector, [])

    def _walk_dir(
        self, rel: str, dest: str, vector: tuple[bool, ...], pending: list[Entry]
    ) -> Iterator[Entry]:
        try:
            with os.scandir(self._abs(rel)) as it:
                items = sorted((e.name, e.path) for e in it)
        except (FileNotFoundError, NotADirectoryError):
            return
        except OSError as error:
            raise ContextError(f"can't read {rel!r} in the build context: {error.strerror}") from None
        ignore = self.ignore if self.ignore else None
        for name, full in items:
            child, child_dest = _join(rel, name), _join(dest, name)
            try:
                info = os.lstat(full)
                link = os.readlink(full) if st_.S_ISLNK(info.st_mode) else None
            except FileNotFoundError:
                continue
            excluded, child_vector = ignore._eval(child, vector) if ignore else (False, ())
            entry = Entry(child, child_dest, info, link)
            is_dir = st_.S_ISDIR(info.st_mode)
            if excluded:  # still entered if an exception may re-include something inside
                if is_dir and ignore and ignore._descends(child):
                    pending.append(entry)
                    yield from self._walk_dir(child, child_dest, child_vector, pending)
                    if pending and pending[-1] is entry:
                        pending.pop()
                continue
            yield from pending  # excluded parents of an included file come with it
            pending.clear()
            yield entry
            if is_dir:
                yield from self._walk_dir(child, child_dest, child_vector, pending)

    def open(self, entry: Entry) -> io.BufferedReader:
        """A regular file of the context for reading: its last component is not followed, and it must
        still be the file ``walk`` saw (same inode)."""
        flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK
        try:
            fd = os.open(self._abs(entry.path), flags)
        except OSError as error:
            raise ContextError(f"can't read {entry.path!r} in the build context: {error.strerror}") from None
        info = os.fstat(fd)
        if not st_.S_ISREG(info.st_mode) or (info.st_ino, info.st_dev) != (
            entry.stat.st_ino,
            entry.stat.st_dev,
        ):
            os.close(fd)
            raise ContextError(f"{entry.path!r} in the build context changed while it was read")
        return os.fdopen(fd, "rb")

    # -- the cache key ----------------------------------------------------------------------------

    def digest(self, matches: list[Match]) -> str:
        """'sha256:<hex>' over what the matches copy: destination paths, types, permission bits, link
        targets and file contents (not times, not owners)."""
        total = hashlib.sha256()
        for match in matches:
            total.update(b"match\0%d\0" % match.is_dir)
            for entry in self.walk(match):
                kind = entry.kind
                payload = entry.link if kind == "symlink" else self._content(entry) if kind == "file" else ""
                total.update(os.fsencode(f"{entry.dest}\0{kind}\0{entry.mode:o}\0{payload}\0"))
        self._save()
        return f"sha256:{total.hexdigest()}"

    def _content(self, entry: Entry) -> str:
        if self._hashes is None:
            self._hashes = self._load()
        info = entry.stat
        known = self._hashes.get(entry.path)
        if isinstance(known, list) and known[:4] == [
            info.st_size,
            info.st_mtime_ns,
            info.st_ino,
            info.st_ctime_ns,
        ]:
            return str(known[4])  # unchanged since it was hashed: not read again
        started = time.time_ns()
        with self.open(entry) as file:
            info = os.fstat(file.fileno())
            key: list[int | str] = [info.st_size, info.st_mtime_ns, info.st_ino, info.st_ctime_ns]
            digest = hashlib.file_digest(file, "sha256").hexdigest()
        # a file changed within the timestamp granularity of this read could keep its key: not cached
        if min(info.st_mtime_ns, info.st_ctime_ns) < started - _RACY_NS:
            self._hashes[entry.path] = [*key, digest]
            self._dirty = True
        return digest

    def _load(self) -> dict[str, list[int | str]]:
        if self._cache_file is None:
            return {}
        try:
            data = json.loads(self._cache_file.read_text())
        except (OSError, ValueError):
            return {}
        files = data.get("files") if isinstance(data, dict) and data.get("root") == self._root else None
        return files if isinstance(files, dict) else {}

    def _save(self) -> None:
        if not self._dirty or self._cache_file is None or self._hashes is None:
            return
        self._dirty = False
        try:
            self._cache_file.parent.mkdir(parents=True, exist_ok=True)
            temporary = self._cache_file.with_name(f".{self._cache_file.name}.{os.getpid()}")
            temporary.write_text(json.dumps({"root": self._root, "files": self._hashes}))
            os.replace(temporary, self._cache_file)
        except OSError:
            pass  # the cache only saves time


def _decompressed(head: bytes, file: BinaryIO) -> Any:
    """The stream docker's DetectCompression would read: gzip, bzip2, xz, zstd by magic, else as is."""
    if head.startswith(b"\x1f\x8b\x08"):
        return gzip.GzipFile(fileobj=file)
    if head.startswith(b"BZh"):
        return bz2.BZ2File(file)
    if head.startswith(b"\xfd7zXZ\x00"):
        return lzma.LZMAFile(file)
    if head.startswith(b"\x28\xb5\x2f\xfd") or (head[1:4] == b"\x2a\x4d\x18" and head[0] & 0xF0 == 0x50):
        import zstandard  # a zstd frame, or a skippable frame before one

        return zstandard.ZstdDecompressor().stream_reader(file)
    return file


def is_tar_archive(path: Path) -> bool:
    """Whether ADD unpacks this local file: a tar, plain or compressed, known by its magic bytes and a
    valid first tar header (checksum included), as buildkit checks; never by its name."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK)
    except OSError:
        return False
    if not st_.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        return False
    with os.fdopen(fd, "rb") as file:
        head = file.read(6)
        file.seek(0)
        try:
            with _decompressed(head, file) as stream:
                block = b""
                while len(block) < tarfile.BLOCKSIZE:
                    chunk = stream.read(tarfile.BLOCKSIZE - len(block))
                    if not chunk:
                        return False  # shorter than one header
                    block += chunk
            tarfile.TarInfo.frombuf(block, "utf-8", "surrogateescape")
        except Exception:  # a corrupt stream or header, whichever decompressor found it
            return False
        return True
