"""Files and folders only their owner may read: 0600 files, 0700 folders, tightened if they exist.

The development data dir (``.mplogin``) holds the stand-in's database (users, sessions, the
encrypted session keys), logs, the apps' generated secrets and the session_key encryption key;
on a shared machine other accounts must not read any of it. Creating with the right mode is not
enough: a file or folder left by an older version (or copied in) keeps its looser mode, so each
start tightens what is already there. Only group and other bits are removed; symbolic links
are left alone (a mode change would follow them out of the tree).
"""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import IO

FILE_MODE = 0o600
DIR_MODE = 0o700
CHILD_UMASK = 0o077
"""The umask for child processes of the dev stack: what they create is private too."""

_OTHERS = 0o077


def _tighten(path: Path) -> None:
    try:
        info = path.lstat()
    except FileNotFoundError:
        return
    if stat.S_ISLNK(info.st_mode) or not info.st_mode & _OTHERS:
        return
    if stat.S_ISDIR(info.st_mode) or stat.S_ISREG(info.st_mode):
        path.chmod(stat.S_IMODE(info.st_mode) & ~_OTHERS)


def private_dir(path: Path) -> Path:
    """Create ``path`` (and any missing parent) with mode 0700, or tighten it; returns it."""
    missing = []
    for candidate in (path, *path.parents):
        if candidate.exists():
            break
        missing.append(candidate)
    for folder in reversed(missing):
        folder.mkdir(mode=DIR_MODE, exist_ok=True)
    _tighten(path)
    return path


def tighten_tree(root: Path) -> None:
    """Remove group and other access from ``root`` and every file and folder under it."""
    if not root.exists() or root.is_symlink():
        return
    _tighten(root)
    for folder, folders, files in os.walk(root):
        here = Path(folder)
        for name in (*folders, *files):
            _tighten(here / name)


def tighten(path: Path) -> None:
    """Remove group and other access from one file or folder, if it exists."""
    _tighten(path)


def _open_private(path: Path, flags: int) -> int:
    fd = os.open(path, flags | os.O_CREAT, FILE_MODE)
    try:
        mode = stat.S_IMODE(os.fstat(fd).st_mode)
        if mode & _OTHERS:
            os.fchmod(fd, mode & ~_OTHERS)
    except BaseException:
        os.close(fd)
        raise
    return fd


def open_private_append(path: Path) -> IO[bytes]:
    """``path`` opened to append bytes, created 0600 or tightened when it exists."""
    return os.fdopen(_open_private(path, os.O_WRONLY | os.O_APPEND), "ab")


def write_private(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` (its folder created 0700), the file 0600 even if it existed."""
    private_dir(path.parent)
    fd = _open_private(path, os.O_WRONLY | os.O_TRUNC)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        handle.write(text)
