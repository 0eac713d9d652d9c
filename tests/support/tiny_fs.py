"""A tiny tmpfs for disk-full tests (import ``tiny_fs_mount`` to use the ``tiny_fs`` fixture), and filling a
file system to its last byte."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

TINY_FS_MIB = 4


def mounted_tmpfs(folder: Path, size_mib: int) -> Iterator[Path]:
    """Mount a ``size_mib`` MiB tmpfs at ``folder`` (created) for the test and unmount it after; skipped with the
    reason where mounting is not possible (needs root)."""
    if os.geteuid() != 0:
        pytest.skip("filling a file system mounts a small tmpfs, which needs root (run the suite as root)")
    folder.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size_mib}m,mode=0755", "tmpfs", str(folder)],
        capture_output=True,
        text=True,
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({done.stderr.strip() or done.returncode}): no small file system")
    try:
        yield folder
    finally:
        subprocess.run(["umount", "-l", str(folder)], capture_output=True)


@pytest.fixture(name="tiny_fs")
def tiny_fs_mount(tmp_path: Path) -> Iterator[Path]:
    """``tiny_fs``: a TINY_FS_MIB tmpfs mounted for the test; skipped with the reason where that is not possible."""
    yield from mounted_tmpfs(tmp_path / "tiny", TINY_FS_MIB)


def fill(folder: Path) -> Path:
    """Write a file in ``folder`` until the file system refuses another byte; returns it."""
    filler = folder / "filler"
    block = b"\0" * 65536
    with open(filler, "wb", buffering=0) as f:
        for size in (65536, 4096, 1):
            try:
                while True:
                    f.write(block[:size])
            except OSError:
                continue
    return filler
