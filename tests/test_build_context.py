"""puller.build.context: .dockerignore rules, COPY/ADD source resolution inside the context, the cache key."""

from __future__ import annotations

import bz2
import gzip
import hashlib
import io
import json
import lzma
import os
import tarfile
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest
import zstandard

from puller.build.context import BuildContext, ContextError, IgnorePatterns, is_tar_archive

# -- .dockerignore ---------------------------------------------------------------------------------

# (patterns, path, ignored): docker's documentation and moby/patternmatcher's own tests
IGNORE_TABLE = [
    (["*/temp*"], "somedir/temporary.txt", True),
    (["*/temp*"], "somedir/temp", True),
    (["*/temp*"], "temp", False),
    (["*/temp*"], "a/b/temp", False),
    (["*/temp*"], "a/temp/inside", True),
    (["*/*/temp*"], "somedir/subdir/temporary.txt", True),
    (["*/*/temp*"], "somedir/temp", False),
    (["temp?"], "tempa", True),
    (["temp?"], "tempab", False),
    (["temp?"], "temp", False),
    (["temp?"], "tempa/file", True),
    (["**/*.go"], "main.go", True),
    (["**/*.go"], "x/y/z.go", True),
    (["**/*.go"], "x/y/z.goo", False),
    (["**.go"], "x/y/z.go", True),  # moby's suffix match
    (["*.md", "!README.md"], "README.md", False),
    (["*.md", "!README.md"], "notes.md", True),
    (["*.md", "!README.md"], "docs/notes.md", False),
    (["*.md", "!README*.md", "README-secret.md"], "README.md", False),
    (["*.md", "!README*.md", "README-secret.md"], "README-public.md", False),
    (["*.md", "!README*.md", "README-secret.md"], "README-secret.md", True),
    (["*.md", "!README*.md", "README-secret.md"], "CHANGES.md", True),
    (["docs", "!docs/README.md"], "docs/README.md", False),
    (["docs", "!docs/README.md"], "docs/other.md", True),
    (["docs", "!docs/README.md"], "docs", True),
    (["docs/*", "!docs/README.md"], "docs/README.md", False),
    (["/foo/bar"], "foo/bar", True),
    (["/foo/bar"], "foo/bar/baz", True),
    (["/foo/bar"], "x/foo/bar", False),
    (["docs/"], "docs/x", True),
    (["./docs//a/../b"], "docs/b", True),
    (["**", "!util/docker/web"], "util/docker/web/foo", False),
    (["**", "!util/docker/web", "util/docker/web/foo"], "util/docker/web/foo", True),
    (["dir/**"], "dir", False),
    (["dir/**"], "dir/a/b", True),
    (["**/dir2/*"], "dir/dir2/file", True),
    (["a[b-d]e"], "ace", True),
    (["a[b-d]e"], "aze", False),
    (["a[^b-d]e"], "aze", True),
    ([".*"], ".foo", True),
    ([".*"], "foo", False),
    (["abc.def"], "abcZdef", False),
    (["a(b)c/def"], "a(b)c/def", True),
    (["a\\*b"], "a*b", True),
    (["a\\*b"], "axb", False),
    (["../../something"], "something", False),
    (["x", "!../x"], "x", True),
]


@pytest.mark.parametrize(("patterns", "path", "expected"), IGNORE_TABLE)
def test_ignore_patterns_follow_docker(patterns: list[str], path: str, expected: bool) -> None:
    assert IgnorePatterns.parse("\n".join(patterns)).ignored(path) is expected


def test_ignore_file_syntax() -> None:
    rules = IgnorePatterns.parse(
        "\ufeff# a comment\r\n\n   \n  node_modules  \r\n  # not a comment\n! keep\n"
    )
    assert rules.patterns == ("node_modules", "# not a comment", "!keep")
    assert rules.ignored("node_modules/x/y")
    assert rules.ignored("# not a comment")
    assert not IgnorePatterns.parse("").ignored("anything")


@pytest.mark.parametrize("line", ["!", "[", "a[", "[]a]", "[x-]", "a[z-a]", "trailing\\"])
def test_invalid_ignore_patterns_are_refused(line: str) -> None:
    with pytest.raises(ContextError, match=r"invalid \.dockerignore pattern"):
        IgnorePatterns.parse(f"ok\n{line}\n")


# -- a context to build from -----------------------------------------------------------------------


def make_tree(root: Path, files: Mapping[str, str | bytes], links: dict[str, str] | None = None) -> Path:
    for name, content in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content.encode() if isinstance(content, str) else content)
    for name, target in (links or {}).items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        os.symlink(target, root / name)
    return root


def walked(ctx: BuildContext, sources: list[str]) -> list[tuple[str, str, str]]:
    return [(e.path, e.dest, e.kind) for m in ctx.resolve(sources) for e in ctx.walk(m)]


def content(ctx: BuildContext, source: str) -> bytes:
    (match,) = ctx.resolve([source])
    (entry,) = ctx.walk(match)
    with ctx.open(entry) as file:
        return file.read()


def test_file_and_directory_sources(tmp_path: Path) -> None:
    ctx = BuildContext(
        make_tree(tmp_path, {"app.py": "a", "src/b/c.py": "c", "src/a.py": "x", "src/b.txt": "t"})
    )
    (match,) = ctx.resolve(["./src/../app.py"])
    assert (match.path, match.resolved, match.is_dir, match.name) == ("app.py", "app.py", False, "app.py")
    assert walked(ctx, ["app.py"]) == [("app.py", "app.py", "file")]
    assert walked(ctx, ["src/"]) == [
        ("src/a.py", "a.py", "file"),
        ("src/b", "b", "dir"),
        ("src/b/c.py", "b/c.py", "file"),
        ("src/b.txt", "b.txt", "file"),
    ]
    assert [e.dest for e in ctx.walk(ctx.resolve(["."])[0])] == [
        "app.py",
        "src",
        "src/a.py",
        "src/b",
        "src/b/c.py",
        "src/b.txt",
    ]


def test_glob_sources(tmp_path: Path) -> None:
    files = {
        "a.txt": "",
        "b.txt": "",
        "c.md": "",
        "a*b": "",
        "a*bc": "",
        "src/x.py": "",
        "lib/y.py": "",
        "real/z.py": "",
    }
    ctx = BuildContext(make_tree(tmp_path, files, {"linked": "real"}))

    def paths(*sources: str) -> list[str]:
        return [m.path for m in ctx.resolve(list(sources))]

    assert paths("*.txt") == ["a.txt", "b.txt"]
    assert paths("[ab].txt", "?.md") == ["a.txt", "b.txt", "c.md"]
    assert paths("[^a].txt") == ["b.txt"]
    assert paths("a[*]b") == ["a*b"]
    assert paths("a\\*b?") == ["a*bc"]
    assert paths("*/*.py") == ["lib/y.py", "real/z.py", "src/x.py"]  # a symlinked directory is not entered
    assert paths("linked/*.py") == ["real/z.py"]  # ... but the part before the glob is followed
    assert [m.is_dir for m in ctx.resolve(["s*"])] == [True]
    assert paths("nothing*", "[") == []  # buildkit allows an empty wildcard
    with pytest.raises(ContextError, match=r"'nodir/\*\.py': no such file"):
        ctx.resolve(["nodir/*.py"])


def test_missing_source(tmp_path: Path) -> None:
    ctx = BuildContext(make_tree(tmp_path, {"a": "", "file": ""}))
    with pytest.raises(ContextError) as raised:
        ctx.resolve(["a", "missing.txt"])
    assert str(raised.value) == "COPY source 'missing.txt': no such file or directory in the build context"
    with pytest.raises(ContextError):
        ctx.resolve(["file/inside"])


def test_ignored_files_are_invisible(tmp_path: Path) -> None:
    files = {
        ".dockerignore": "Dockerfile\n.dockerignore\nsecret*\ndocs\n!docs/README.md\nbuild\n",
        "Dockerfile": "FROM scratch",
        "app.py": "",
        "secret.key": "",
        "docs/README.md": "",
        "docs/other.md": "",
        "build/out": "",
    }
    ctx = BuildContext(make_tree(tmp_path, files, {"evil": "etc", "link-to-secret": "secret.key"}))
    assert ctx.ignore.ignored("secret.key") and ctx.ignore.ignored(".dockerignore")
    assert walked(ctx, ["."]) == [
        ("app.py", "app.py", "file"),
        ("docs", "docs", "dir"),
        ("docs/README.md", "docs/README.md", "file"),
        ("evil", "evil", "symlink"),
        ("link-to-secret", "link-to-secret", "symlink"),
    ]
    assert walked(ctx, ["docs"]) == [("docs/README.md", "README.md", "file")]
    assert [m.path for m in ctx.resolve(["[a-d]*"])] == ["app.py", "docs"]
    with pytest.raises(ContextError, match="'l\\*': no such file"):
        ctx.resolve(["l*"])  # link-to-secret dangles once the context is filtered: buildkit fails the same
    for source in (
        "secret.key",
        "docs/other.md",
        "build",
        "build/out",
        "Dockerfile",
        ".dockerignore",
        "link-to-secret",
    ):
        with pytest.raises(ContextError, match="no such file"):
            ctx.resolve([source])


def test_exceptions_reach_into_excluded_directories_as_fsutil_walks(tmp_path: Path) -> None:
    files = {"a/keep": "", "a/drop": "", "a/b/keep": "", "c/keep": "", "c/drop": ""}
    make_tree(tmp_path, {**files, ".dockerignore": ".dockerignore\na\nc\n!**/keep\n"})
    assert [e.path for e in BuildContext(tmp_path).walk(BuildContext(tmp_path).resolve(["."])[0])] == [
        "a",
        "a/b",
        "a/b/keep",
        "a/keep",
        "c",
        "c/keep",
    ]
    (tmp_path / ".dockerignore").write_text(
        ".dockerignore\na\nc\n!c/keep\n"
    )  # a plain exception: only 'c' is entered
    ctx = BuildContext(tmp_path)
    assert walked(ctx, ["."]) == [("c", "c", "dir"), ("c/keep", "c/keep", "file")]
    assert walked(ctx, ["c"]) == [("c/keep", "keep", "file")]
    with pytest.raises(ContextError):
        ctx.resolve(["a"])


def test_dockerfile_specific_ignore_file_wins(tmp_path: Path) -> None:
    files = {".dockerignore": "a\n", "ci/app.Dockerfile.dockerignore": "b\n", "a": "", "b": ""}
    make_tree(tmp_path, files)
    assert [m.path for m in BuildContext(tmp_path, "ci/app.Dockerfile").resolve(["a"])] == ["a"]
    assert BuildContext(tmp_path, str(tmp_path / "ci/app.Dockerfile")).ignore.patterns == ("b",)
    with pytest.raises(ContextError):
        BuildContext(tmp_path).resolve(["a"])


# -- hostile sources -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "source", ["../../etc/passwd", "/etc/passwd", "a/../../etc/passwd", "evil/passwd", "up/passwd"]
)
def test_sources_never_leave_the_context(tmp_path: Path, source: str) -> None:
    root = make_tree(tmp_path / "ctx", {"a/x": ""}, {"evil": "/etc", "up": "../../../../../../etc"})
    with pytest.raises(ContextError, match="no such file or directory in the build context"):
        BuildContext(root).resolve([source])
    # buildkit's reading: '/' is the context root, '..' stops there, a link's target is inside too
    make_tree(root, {"etc/passwd": "the context's own"})
    (match,) = BuildContext(root).resolve([source])
    assert match.resolved == "etc/passwd"
    assert content(BuildContext(root), source) == b"the context's own"


def test_symlinks_are_copied_as_links_and_followed_only_inside(tmp_path: Path) -> None:
    root = make_tree(
        tmp_path,
        {"data/real.txt": "inside"},
        {"data/out": "/etc/passwd", "top": "data/real.txt", "gone": "/etc/passwd"},
    )
    ctx = BuildContext(root)
    (out,) = [e for e in ctx.walk(ctx.resolve(["data"])[0]) if e.dest == "out"]
    assert (out.kind, out.link) == ("symlink", "/etc/passwd")
    (top,) = ctx.walk(ctx.resolve(["top"])[0])  # a source given by name is followed, keeping its name
    assert (top.path, top.dest, top.kind) == ("data/real.txt", "top", "file")
    with pytest.raises(ContextError):
        ctx.resolve(["gone"])  # -> <context>/etc/passwd, which is not there


def test_symlink_loops_and_globs_that_climb(tmp_path: Path) -> None:
    ctx = BuildContext(make_tree(tmp_path, {"a/b": "", "c": ""}, {"l/loop1": "loop2", "l/loop2": "loop1"}))
    with pytest.raises(ContextError, match="too many levels of symbolic links"):
        ctx.resolve(["l/loop1"])
    assert [m.path for m in ctx.resolve(["*/../../*"])] == ["a", "c", "l"]  # cleaned to '*' at the root


def test_ignore_patterns_that_climb_stay_inside(tmp_path: Path) -> None:
    ctx = BuildContext(
        make_tree(
            tmp_path / "ctx", {".dockerignore": "../../something\n!../x\n/\n", "something": "", "x": ""}
        )
    )
    assert [m.path for m in ctx.resolve(["something", "x"])] == ["something", "x"]


# -- the cache key ---------------------------------------------------------------------------------


def backdate(root: Path) -> None:
    """Files older than the racy window, as an unchanged tree is."""
    past = time.time() - 3600
    for directory, _, names in os.walk(root):
        for name in names:
            os.utime(os.path.join(directory, name), (past, past), follow_symlinks=False)


def test_digest_tracks_content_mode_and_links_not_times(tmp_path: Path) -> None:
    root = make_tree(tmp_path / "ctx", {"src/a.txt": "aaaa", "src/b.txt": "b"}, {"src/l": "a.txt"})

    def key() -> str:
        ctx = BuildContext(root)
        return ctx.digest(ctx.resolve(["src"]))

    first = key()
    assert first.startswith("sha256:") and key() == first
    os.utime(root / "src/a.txt", (1, 1))
    assert key() == first
    (root / "src/a.txt").write_text("AAAA")
    assert key() != first
    (root / "src/a.txt").write_text("aaaa")
    assert key() == first
    (root / "src/a.txt").chmod(0o755)
    assert key() != first
    (root / "src/a.txt").chmod(0o644)
    assert key() == first
    (root / "src/l").unlink()
    (root / "src/l").symlink_to("b.txt")
    assert key() != first
    (root / "src/l").unlink()
    (root / "src/l").symlink_to("a.txt")
    assert key() == first
    (root / "src/b.txt").rename(root / "src/c.txt")
    assert key() != first


def test_digest_reads_nothing_twice(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = make_tree(tmp_path / "ctx", {"a.txt": "one", "dir/b.txt": "two"})
    backdate(root)
    cache = tmp_path / "cache"
    first_ctx = BuildContext(root, cache_dir=cache)
    first = first_ctx.digest(first_ctx.resolve(["."]))

    reads: list[object] = []
    real = hashlib.file_digest

    def counted(*args: Any) -> Any:
        reads.append(args)
        return real(*args)

    monkeypatch.setattr(hashlib, "file_digest", counted)
    ctx = BuildContext(root, cache_dir=cache)
    assert ctx.digest(ctx.resolve(["."])) == first
    assert ctx.digest(ctx.resolve(["."])) == first
    assert reads == []

    # the cached hash is trusted as it stands: proof that the file itself was not read
    (cache_file,) = cache.iterdir()
    data = json.loads(cache_file.read_text())
    data["files"]["a.txt"][4] = "0" * 64
    cache_file.write_text(json.dumps(data))
    ctx = BuildContext(root, cache_dir=cache)
    assert ctx.digest(ctx.resolve(["."])) != first
    # ... until the file changes: then it is hashed again
    (root / "a.txt").write_text("one")
    ctx = BuildContext(root, cache_dir=cache)
    assert ctx.digest(ctx.resolve(["."])) == first
    assert len(reads) == 1


def test_a_file_changed_just_after_hashing_is_not_trusted(tmp_path: Path) -> None:
    root = make_tree(tmp_path, {"a": "xxxx"})
    ctx = BuildContext(root, cache_dir=tmp_path / "cache")
    first = ctx.digest(ctx.resolve(["a"]))
    (root / "a").write_text("yyyy")  # same size, likely the same timestamp tick
    assert ctx.digest(ctx.resolve(["a"])) != first


@pytest.mark.serial  # digests 10,000 files within 1 s
def test_ten_thousand_files_resolve_and_digest_fast_when_unchanged(tmp_path: Path) -> None:
    root = tmp_path / "ctx"
    for d in range(100):
        (root / f"d{d}").mkdir(parents=True)
        for f in range(100):
            (root / f"d{d}" / f"f{f}.txt").write_bytes(b"%d" % f)
    (root / ".dockerignore").write_text("*/f9*\n!*/f99.txt\n")
    backdate(root)
    cache = tmp_path / "cache"
    ctx = BuildContext(root, cache_dir=cache)
    first = ctx.digest(ctx.resolve(["."]))
    started = time.perf_counter()
    ctx = BuildContext(root, cache_dir=cache)
    assert ctx.digest(ctx.resolve(["."])) == first
    assert time.perf_counter() - started < 1.0


# -- ADD's archives --------------------------------------------------------------------------------


def tar_bytes() -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as archive:
        info = tarfile.TarInfo("hello.txt")
        info.size = 5
        archive.addfile(info, io.BytesIO(b"hello"))
    return buffer.getvalue()


def test_tar_archives_are_known_by_their_bytes(tmp_path: Path) -> None:
    plain = tar_bytes()
    archives = {
        "plain": plain,
        "gz": gzip.compress(plain),
        "bz2": bz2.compress(plain),
        "xz": lzma.compress(plain),
        "zst": zstandard.ZstdCompressor().compress(plain),
    }
    others = {
        "text.tar.gz": b"not an archive at all",
        "notes.gz": gzip.compress(b"text, compressed" * 100),
        "empty.tar": b"",
        "zeros.tar": b"\0" * 1024,
        "short.tar": plain[:300],
        "broken.xz": b"\xfd7zXZ\x00garbage",
        "broken.zst": b"\x28\xb5\x2f\xfdgarbage",
    }
    for name, data in {**archives, **others}.items():
        (tmp_path / name).write_bytes(data)
    (tmp_path / "link").symlink_to("plain")
    assert [name for name in archives if is_tar_archive(tmp_path / name)] == list(archives)
    assert [name for name in others if is_tar_archive(tmp_path / name)] == []
    assert not is_tar_archive(tmp_path / "link")
    assert not is_tar_archive(tmp_path)
    assert not is_tar_archive(tmp_path / "missing")
