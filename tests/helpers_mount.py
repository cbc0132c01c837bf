"""A real small filesystem for the fault tests: a tmpfs root mounts where the test wants it.

A full disk or a read-only checkpoint dir is tested on a real mount, not by mocking the
write: `tmpfs(path)` mounts one (skipping the test with the reason where it cannot be
mounted, e.g. without root) and unmounts it afterwards, lazily if something still holds it.
"""
from __future__ import annotations

import subprocess
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import pytest


@contextmanager
def tmpfs(path: Path, size: str = "4m", options: str = "") -> Iterator[Path]:
    path.mkdir(exist_ok=True)
    flags = ",".join(part for part in (f"size={size}", options) if part)
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", flags, "tmpfs", str(path)],
                          capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a {size} tmpfs here (needs root): {done.stderr.strip()}")
    try:
        yield path
    finally:
        if subprocess.run(["umount", str(path)], capture_output=True).returncode != 0:
            subprocess.run(["umount", "-l", str(path)], capture_output=True)
