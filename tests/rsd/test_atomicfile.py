"""rsd.atomicfile: a write replaces the file whole or leaves the old one, with plain-open permissions."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from rsd import atomicfile
from rsd.atomicfile import write_atomic


def test_write_replaces_atomically(tmp_path: Path) -> None:
    target = tmp_path / "out.png"
    target.write_bytes(b"old")
    write_atomic(target, b"new contents")
    assert target.read_bytes() == b"new contents"
    assert os.listdir(tmp_path) == ["out.png"]


def test_write_failure_leaves_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    target = tmp_path / "out.png"
    target.write_bytes(b"old")

    def broken_fsync(fd: int) -> None:
        raise OSError("disk on fire")

    monkeypatch.setattr(atomicfile.os, "fsync", broken_fsync)
    with pytest.raises(OSError, match="disk on fire"):
        write_atomic(target, b"new")
    assert target.read_bytes() == b"old" and os.listdir(tmp_path) == ["out.png"]
    with pytest.raises(OSError):
        write_atomic(tmp_path / "fresh.png", b"new")
    assert os.listdir(tmp_path) == ["out.png"]


def test_write_refuses_directory(tmp_path: Path) -> None:
    (tmp_path / "d.png").mkdir()
    with pytest.raises(IsADirectoryError):
        write_atomic(tmp_path / "d.png", b"x")
    assert os.listdir(tmp_path) == ["d.png"]


def test_write_gives_plain_open_permissions(tmp_path: Path) -> None:
    plain = tmp_path / "plain.png"
    plain.write_bytes(b"x")  # created by open(): 0o666 less the umask
    write_atomic(tmp_path / "new.png", b"y")
    assert (tmp_path / "new.png").stat().st_mode == plain.stat().st_mode
    plain.chmod(0o640)  # overwriting keeps an existing file's mode
    write_atomic(plain, b"z")
    assert plain.stat().st_mode & 0o777 == 0o640 and plain.read_bytes() == b"z"
