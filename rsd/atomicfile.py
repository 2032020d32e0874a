"""Atomic file replacement: a reader sees the old file or the new one, never a partial write.

Kept apart from the image codecs (rsd.imagefile) because it is about the file system, not images:
the CLI writes its encoded outputs through it.
"""

from __future__ import annotations

import contextlib
import os
import secrets
from pathlib import Path


def write_atomic(path: str | os.PathLike[str], data: bytes) -> None:
    """Write bytes atomically: temp file in the same folder, fsync, os.replace; nothing partial remains.

    The result has the permissions a plain open() would give: an existing file's mode, else 0o666
    less the umask (applied by the kernel at creation).
    """
    target = Path(path)
    if target.is_dir():
        raise IsADirectoryError(f"cannot write an image over the directory {os.fspath(target)!r}")
    temp = target.with_name(f".{target.name}.{secrets.token_hex(6)}.tmp")
    descriptor = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        with os.fdopen(descriptor, "wb") as file:
            file.write(data)
            file.flush()
            os.fsync(file.fileno())
        if target.exists():
            os.chmod(temp, target.stat().st_mode & 0o7777)
        os.replace(temp, target)
    except BaseException:
        temp.unlink(missing_ok=True)
        raise
    with contextlib.suppress(OSError):  # make the rename durable (POSIX); best effort elsewhere
        folder = os.open(target.parent, os.O_RDONLY)
        try:
            os.fsync(folder)
        finally:
            os.close(folder)
