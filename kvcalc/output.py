"""Write a command's output file (``--output PATH``) safely, by these rules in this order:

1. The target may not be one of the command's inputs (same st_dev and st_ino, or same real path).
2. A directory, or a path that cannot be looked up, is an error; so is a read-only existing target
   (no write bit at all, or ``os.access(W_OK)`` false: for root, ``access`` alone says yes).
3. A target that exists and is not a regular file (/dev/null, /dev/full, a FIFO), or that names an
   open descriptor (/dev/stdout, /dev/fd/N, /proc/PID/fd/N), is opened and written, never replaced.
4. A regular file, new or existing, is written to a temporary file in its folder, fsynced and renamed
   over it (``os.replace``): a failure (ENOSPC, EFBIG, an exception, Ctrl-C) leaves the old file whole
   and removes the temporary one. A symlink is followed: its target is replaced, the link kept.
5. A new file gets mode ``0o666 & ~umask``; an existing one keeps its mode (and, if root, owner).
6. Every failure is one ``OptionError`` line, ``--output: PATH: REASON``. Nothing is printed.
"""

from __future__ import annotations

import errno
import os
import re
import stat
from collections.abc import Sequence
from pathlib import Path

from kvcalc.errors import OptionError

# Paths that name an already-open descriptor: reopen them, never rename onto what they resolve to.
_FD_LINK = re.compile(r"/dev/(stdout|stderr|fd/\d+)|/proc/(self|thread-self|\d+)/fd/\d+")


def write_output(data: bytes, target: Path, inputs: Sequence[Path] = ()) -> None:
    """Write ``data`` (bytes) to ``target`` by the rules in this module's docstring.

    ``inputs`` are the files the command read; raises ``OptionError`` naming ``target`` on failure.
    """
    if any(_same_file(target, source) for source in inputs):
        raise _error(target, "is an input of this command; refusing to overwrite it")
    st = _stat(target)
    if st is not None and stat.S_ISDIR(st.st_mode):
        raise _error(target, os.strerror(errno.EISDIR))
    if st is not None and (st.st_mode & 0o222 == 0 or not os.access(target, os.W_OK)):
        raise _error(target, "the file is read-only; not writing it")
    if st is not None and (not stat.S_ISREG(st.st_mode) or _FD_LINK.fullmatch(os.path.abspath(target))):
        _write_in_place(data, target)
    else:
        _replace(data, target, st)


def _error(target: Path, reason: OSError | str) -> OptionError:
    """The one-line error: ``--output: PATH: REASON`` (an OSError gives its strerror)."""
    if isinstance(reason, OSError):
        reason = reason.strerror or str(reason)
    return OptionError(f"--output: {target}: {reason}")


def _same_file(a: Path, b: Path) -> bool:
    """True if ``a`` and ``b`` are one file (same st_dev and st_ino), or name the same real path."""
    try:
        return os.path.samefile(a, b)
    except OSError:  # one of them does not exist (yet)
        return os.path.realpath(a) == os.path.realpath(b)


def _stat(target: Path) -> os.stat_result | None:
    """``os.stat`` (following links) of ``target``, or None if it does not exist."""
    try:
        return os.stat(target)
    except FileNotFoundError:
        return None
    except OSError as e:  # ENOTDIR, ELOOP, EACCES on the way there
        raise _error(target, e) from None


def _write_all(fd: int, data: bytes) -> None:
    """Write every byte of ``data`` to ``fd``, looping over short writes."""
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def _write_in_place(data: bytes, target: Path) -> None:
    """Open a device, FIFO or descriptor link and write to it (appending: it may hold earlier output)."""
    try:
        fd = os.open(target, os.O_WRONLY | os.O_APPEND)
        try:
            _write_all(fd, data)
        finally:
            os.close(fd)
    except OSError as e:
        raise _error(target, e) from None


def _replace(data: bytes, target: Path, st: os.stat_result | None) -> None:
    """Write a temporary file beside the real target, fsync it, give it its mode, rename it over."""
    import tempfile  # only when writing a file: keeps the CLI's start-up lean

    final = Path(os.path.realpath(target))
    try:
        fd, tmp = tempfile.mkstemp(dir=final.parent, prefix=f".{final.name}.", suffix=".tmp")
    except OSError as e:
        raise _error(target, f"cannot create a file in {final.parent}: {e.strerror}") from None
    try:
        try:
            _write_all(fd, data)
            _set_owner_and_mode(fd, st)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, final)
    except BaseException as e:
        Path(tmp).unlink(missing_ok=True)
        if isinstance(e, OSError):
            raise _error(target, e) from None
        raise


def _set_owner_and_mode(fd: int, st: os.stat_result | None) -> None:
    """Give the temporary file the old file's owner and mode bits, or ``0o666 & ~umask`` if new."""
    if st is None:
        umask = os.umask(0)  # the only way to read the umask is to set it, then put it back
        os.umask(umask)
        os.fchmod(fd, 0o666 & ~umask)
        return
    try:  # only root may give a file away; chown first, as it clears setuid bits
        os.fchown(fd, st.st_uid, st.st_gid)
    except PermissionError:
        pass
    os.fchmod(fd, stat.S_IMODE(st.st_mode))
