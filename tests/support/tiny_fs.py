"""A tiny tmpfs for disk-full tests (import ``tiny_fs_mount`` to use the ``tiny_fs`` fixture), and filling a
file system to its last byte."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

TINY_FS_MIB = 4


@pytest.fixture(name="tiny_fs")
def tiny_fs_mount(tmp_path: Path) -> Iterator[Path]:
    """``tiny_fs``: a small tmpfs mounted for the test (needs root and mount); skipped with the reason otherwise."""
    if os.geteuid() != 0:
        pytest.skip("the disk-full scenario mounts a tiny tmpfs, which needs root (run the suite as root)")
    mount_point = tmp_path / "tiny"
    mount_point.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={TINY_FS_MIB}m,mode=0755", "tmpfs", str(mount_point)],
        capture_output=True,
        text=True,
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({done.stderr.strip() or done.returncode}): no tiny file system")
    try:
        yield mount_point
    finally:
        subprocess.run(["umount", "-l", str(mount_point)], capture_output=True)


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
