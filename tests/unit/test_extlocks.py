from __future__ import annotations

import os
import time
from pathlib import Path

from guardrun.supervisor.extlocks import clear_stale_locks, extensions_root, stale_locks


def test_root_follows_torch_then_xdg_then_home():
    assert extensions_root({"TORCH_EXTENSIONS_DIR": "/x"}) == Path("/x")
    assert extensions_root({"XDG_CACHE_HOME": "/c", "HOME": "/h"}) == Path("/c/torch_extensions")
    assert extensions_root({"HOME": "/h"}) == Path("/h/.cache/torch_extensions")


def _lock(root: Path, rel: str, age: float) -> Path:
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.touch()
    when = time.time() - age
    os.utime(path, (when, when))
    return path


def test_only_locks_made_since_the_start_are_stale(tmp_path):
    new = _lock(tmp_path, "py311_cpu/op_a/lock", 0)
    flat = _lock(tmp_path, "op_b/lock", 0)
    _lock(tmp_path, "py311_cpu/op_c/lock", 3600)
    _lock(tmp_path, "py311_cpu/op_d/build.ninja", 0)
    assert stale_locks(tmp_path, since=time.time() - 60) == sorted([new, flat])


def test_clear_removes_and_journals(tmp_path):
    lock = _lock(tmp_path, "py311_cpu/op/lock", 0)
    seen = []
    removed = clear_stale_locks({"TORCH_EXTENSIONS_DIR": str(tmp_path)}, time.time() - 60,
                                lambda event, **f: seen.append((event, f)), attempt=2)
    assert removed == [lock] and not lock.exists()
    assert seen == [("extension_lock.cleared", {"attempt": 2, "path": str(lock)})]


def test_missing_root_is_nothing_to_do(tmp_path):
    assert stale_locks(tmp_path / "absent", since=0) == []
