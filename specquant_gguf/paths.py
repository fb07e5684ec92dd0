"""Checks of the files a user names, before anything opens them: one clear line instead of a hang
(a FIFO blocks open() forever), a traceback, or a destroyed input."""
from __future__ import annotations

import os
import stat
import tempfile
from pathlib import Path

from .errors import SpecQuantError, UsageError


def regular_file(path: str | os.PathLike[str], what: str = "file") -> Path:
    """path, when it names an existing regular file; else SpecQuantError saying what it is instead."""
    p = Path(path)
    try:
        st = p.stat()
    except FileNotFoundError:
        raise SpecQuantError(f"{what} {str(p)!r}: no such file") from None
    except OSError as exc:
        raise SpecQuantError(f"{what} {str(p)!r}: {exc.strerror or exc}") from None
    if stat.S_ISDIR(st.st_mode):
        raise SpecQuantError(f"{what} {str(p)!r} is a directory")
    if not stat.S_ISREG(st.st_mode):
        raise SpecQuantError(f"{what} {str(p)!r} is not a regular file (a pipe, socket or device)")
    return p


def writable_output(path: str | os.PathLike[str], flag: str = "--out") -> Path:
    """Checks that a file can be created at path (its folder exists and takes a new file) before any
    long work starts; path itself is not touched."""
    p = Path(path)
    folder = p.parent if str(p.parent) else Path(".")
    if p.is_dir():
        raise UsageError(f"{flag} {path} is a directory")
    if not folder.is_dir():
        raise UsageError(f"{flag} {path}: folder {folder} does not exist")
    try:
        with tempfile.NamedTemporaryFile(dir=folder, prefix=p.name + ".probe-"):
            pass
    except OSError as exc:
        raise UsageError(f"{flag} {path}: cannot create a file in {folder} ({exc.strerror or exc})") from None
    return p


def inside(child: str | os.PathLike[str], parent: str | os.PathLike[str]) -> bool:
    """Whether child is parent itself or lies below it (symbolic links resolved)."""
    c, pa = Path(child).resolve(), Path(parent).resolve()
    return c == pa or pa in c.parents
