"""Overlay mounts of a stack of layer directories, and whether this machine allows them.

Lower directories are handed to the kernel one by one (``fsconfig`` with ``lowerdir+``,
Linux 6.8 and newer), so an image's layer count is not bounded by the one page that the
classic ``mount(2)`` options string may take; older kernels get that string. Layer
directories keep their whiteouts as root writes them (``trusted.overlay.*``); a process
that is not root mounts with ``userxattr`` and reads the ``user.overlay.*`` ones.
"""

from __future__ import annotations

import ctypes
import errno
import os
import shutil
import tempfile
from pathlib import Path

_libc = ctypes.CDLL(None, use_errno=True)  # the C library this process already has loaded
MNT_DETACH = 2
# Syscall numbers of the mount API: the same on every architecture (added after the unification).
SYS_MOVE_MOUNT, SYS_FSOPEN, SYS_FSCONFIG, SYS_FSMOUNT = 429, 430, 431, 432
FSCONFIG_SET_FLAG, FSCONFIG_SET_STRING, FSCONFIG_CMD_CREATE = 0, 1, 6
FSOPEN_CLOEXEC = FSMOUNT_CLOEXEC = 1
MOVE_MOUNT_F_EMPTY_PATH = 0x4
AT_FDCWD = -100
PAGE = 4096


class OverlayUnavailable(Exception):
    """The kernel refused the overlay mount; the message says why."""


def _syscall(number: int, *args: object) -> int:
    result = int(_libc.syscall(ctypes.c_long(number), *args))
    if result < 0:
        code = ctypes.get_errno()
        raise OSError(code, os.strerror(code))
    return result


def _fs_messages(context: int) -> str:
    """What the filesystem logged on its context (``e overlayfs: ...``), for the error."""
    lines = []
    while True:
        try:
            data = os.read(context, 1024)
        except OSError:
            break
        if not data:
            break
        lines.append(data.decode(errors="replace").strip())
    return "; ".join(lines)


def _options(
    lowers: list[Path], upper: Path | None, work: Path | None, extra: dict[str, str]
) -> list[tuple[str, str | Path]]:
    options: list[tuple[str, str | Path]] = [("lowerdir+", lower) for lower in lowers]
    if upper is not None and work is not None:
        options += [("upperdir", upper), ("workdir", work)]
    return options + list(extra.items())


def _mount_api(
    lowers: list[Path],
    upper: Path | None,
    work: Path | None,
    target: Path,
    userxattr: bool,
    extra: dict[str, str],
) -> None:
    context = _syscall(SYS_FSOPEN, b"overlay", ctypes.c_uint(FSOPEN_CLOEXEC))
    try:
        options = _options(lowers, upper, work, extra)
        try:
            if userxattr:
                _syscall(SYS_FSCONFIG, context, ctypes.c_uint(FSCONFIG_SET_FLAG), b"userxattr", None, 0)
            for key, value in options:
                _syscall(
                    SYS_FSCONFIG,
                    context,
                    ctypes.c_uint(FSCONFIG_SET_STRING),
                    key.encode(),
                    os.fsencode(value),
                    0,
                )
            _syscall(SYS_FSCONFIG, context, ctypes.c_uint(FSCONFIG_CMD_CREATE), None, None, 0)
        except OSError as exc:
            detail = _fs_messages(context).removeprefix("e ")  # "e overlay: ...": an error line
            raise OSError(exc.errno, detail or exc.strerror) from None
        mount = _syscall(SYS_FSMOUNT, context, ctypes.c_uint(FSMOUNT_CLOEXEC), ctypes.c_uint(0))
        try:
            _syscall(
                SYS_MOVE_MOUNT,
                mount,
                b"",
                AT_FDCWD,
                os.fsencode(target),
                ctypes.c_uint(MOVE_MOUNT_F_EMPTY_PATH),
            )
        finally:
            os.close(mount)
    finally:
        os.close(context)


def _mount_classic(
    lowers: list[Path],
    upper: Path | None,
    work: Path | None,
    target: Path,
    userxattr: bool,
    extra: dict[str, str],
) -> None:
    paths = [*lowers, upper or "", work or ""]
    if any(ch in str(path) for path in paths for ch in ",:"):
        raise OSError(errno.EINVAL, "a layer path holds ',' or ':', which mount options cannot carry")
    options = f"lowerdir={':'.join(map(str, lowers))}"
    if upper is not None and work is not None:
        options += f",upperdir={upper},workdir={work}"
    options += "".join(f",{key}={value}" for key, value in extra.items())
    if userxattr:
        options += ",userxattr"
    if len(options) >= PAGE:
        raise OSError(errno.E2BIG, f"{len(lowers)} layers do not fit in one mount's options before Linux 6.8")
    if _libc.mount(b"overlay", os.fsencode(target), b"overlay", 0, options.encode()) != 0:
        code = ctypes.get_errno()
        raise OSError(code, os.strerror(code))


def mount_overlay(
    lowers: list[Path],
    upper: Path | None,
    work: Path | None,
    target: Path,
    extra: dict[str, str] | None = None,
) -> None:
    """Mount ``lowers`` (top first) under a writable ``upper`` at ``target`` (read-only without one).

    ``extra`` are more mount options (a build turns off ``redirect_dir`` and ``metacopy``:
    an upper directory that becomes a layer must hold whole files and real directories).
    ``OverlayUnavailable`` when the kernel refuses (no privilege, an unsupported filesystem).
    """
    userxattr = os.geteuid() != 0
    extra = extra or {}
    try:
        _mount_api(lowers, upper, work, target, userxattr, extra)
        return
    except OSError as exc:
        old_kernel = exc.errno == errno.ENOSYS or "lowerdir+" in (exc.strerror or "")
        if not old_kernel:
            raise OverlayUnavailable(f"overlay mount refused: {exc.strerror}") from None
    try:  # no mount API, or no lowerdir+ (before Linux 6.8): the classic call
        _mount_classic(lowers, upper, work, target, userxattr, extra)
    except OSError as exc:
        raise OverlayUnavailable(f"overlay mount refused: {exc.strerror}") from None


def unmount(target: Path) -> None:
    if os.path.ismount(target):
        _libc.umount2(os.fsencode(target), MNT_DETACH)


def probe(where: Path) -> str | None:
    """Why overlay mounts fail beside ``where`` (a directory of the store), or None when they work."""
    where.mkdir(parents=True, exist_ok=True)
    base = Path(tempfile.mkdtemp(prefix=".overlay-probe-", dir=where))
    try:
        folders = [base / name for name in ("lower", "upper", "work", "merged")]
        for folder in folders:
            folder.mkdir()
        try:
            mount_overlay([folders[0]], folders[1], folders[2], folders[3])
        except OverlayUnavailable as exc:
            return str(exc)
        unmount(folders[3])
        return None
    finally:
        shutil.rmtree(base, ignore_errors=True)
