"""Clear the torch-extension build locks a stopped attempt left behind.

torch's JIT extension builder (torch.utils.cpp_extension, used by DeepSpeed for its CPU
`shm_comm` op and others) guards each build directory with a plain `lock` file: the
builder creates it with O_EXCL, compiles, and removes it. A builder killed mid-compile
(guardrun stopping the tree, an OOM kill) leaves the file, and every later process that
needs the op waits for it forever — a relaunch hangs at DeepSpeed's "Setting accelerator"
line with no error. Nothing holds the file open, so ownership cannot be checked; the rule
is: once the attempt's tree is gone, a lock created since the attempt started was its own.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Callable, Mapping


def extensions_root(env: Mapping[str, str]) -> Path:
    """Where torch builds JIT extensions: $TORCH_EXTENSIONS_DIR, else the user cache."""
    if env.get("TORCH_EXTENSIONS_DIR"):
        return Path(env["TORCH_EXTENSIONS_DIR"])
    cache = env.get("XDG_CACHE_HOME") or str(Path(env.get("HOME", "~")).expanduser() / ".cache")
    return Path(cache) / "torch_extensions"


def stale_locks(root: Path, since: float) -> list[Path]:
    """Build locks under `root` (at most two levels: <py-tag>/<op>/lock or <op>/lock)
    created at or after `since` (wall-clock seconds)."""
    found = []
    for pattern in ("*/lock", "*/*/lock"):
        for path in root.glob(pattern):
            try:
                if path.is_file() and path.stat().st_mtime >= since:
                    found.append(path)
            except OSError:
                continue
    return sorted(found)


def clear_stale_locks(env: Mapping[str, str], since: float, emit: Callable[..., None],
                      attempt: int) -> list[Path]:
    """Remove the locks the attempt left; journal each. Call only once its tree is gone."""
    removed = []
    for path in stale_locks(extensions_root(env), since):
        try:
            os.unlink(path)
        except FileNotFoundError:
            continue
        except OSError as err:
            emit("extension_lock.stuck", attempt=attempt, path=str(path), error=str(err))
            continue
        removed.append(path)
        emit("extension_lock.cleared", attempt=attempt, path=str(path))
    return removed
