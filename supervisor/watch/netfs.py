"""Whether the checkpoint folder can be followed with inotify, or must be rescanned (issue 16).

inotify reports the changes made through this machine's kernel only: on NFS (and the other
network and cluster filesystems) the files another node writes raise no event here. A
multi-node job's checkpoints are written by node 0's rank 0 alone, so on every other node,
and on any node when the folder is on such a filesystem, the follower rescans the folder at
an interval instead. The filesystem is told by statfs(2)'s f_type, of the folder or, before
the trainer made it, of its nearest existing parent.
"""
from __future__ import annotations

import ctypes
import os
from pathlib import Path

#: statfs f_type magics (linux/magic.h and the filesystems' own sources) of filesystems
#: where another machine's writes raise no inotify event on this one.
NETWORK_MAGICS = {
    0x6969: "nfs",
    0xFF534D42: "cifs",
    0xFE534D42: "smb2",
    0x517B: "smb",
    0x0BD00BD0: "lustre",
    0x47504653: "gpfs",
    0x00C36400: "ceph",
    0x19830326: "beegfs",
    0x65735546: "fuse",
}
#: How often a folder inotify cannot follow is rescanned (seconds): a listing and a stat
#: of each entry's files, cheap next to a checkpoint's minutes between saves.
RESCAN_EVERY = 2.0


class _StatFs(ctypes.Structure):
    # Only f_type is read; the buffer is made larger than any libc's struct statfs.
    _fields_ = [("f_type", ctypes.c_long), ("rest", ctypes.c_byte * 256)]


def fs_magic(path: Path) -> int | None:
    """statfs(2)'s f_type of `path`, or of its nearest existing parent; None if unknown."""
    libc = ctypes.CDLL(None, use_errno=True)  # the process's own libc
    for candidate in (path, *path.parents):
        buf = _StatFs()
        if libc.statfs(os.fsencode(candidate), ctypes.byref(buf)) == 0:
            return buf.f_type & 0xFFFFFFFF
    return None


def why_rescan(magic: int | None, node_count: int) -> str:
    """Why the folder must be rescanned rather than followed with inotify ("": it need not). Pure."""
    if magic in NETWORK_MAGICS:
        return f"the checkpoint folder is on {NETWORK_MAGICS[magic]}, where inotify misses other machines' writes"
    if node_count > 1:
        return f"a {node_count}-node job: another node may write the checkpoints"
    return ""


def signatures(directory: Path) -> dict[str, tuple]:
    """Each entry of the folder and what is under it (paths, sizes, mtimes), for comparing
    two looks: an entry whose signature differs was written to between them. Empty when
    the folder is not there (yet); an entry vanishing mid-walk reads as it was found."""
    found: dict[str, tuple] = {}
    try:
        entries = list(os.scandir(directory))
    except OSError:
        return found
    for entry in entries:
        found[entry.name] = tuple(sorted(_walk(entry)))
    return found


def _walk(entry: os.DirEntry):
    try:
        info = entry.stat(follow_symlinks=False)
        yield entry.path, info.st_size, info.st_mtime_ns
        if entry.is_dir(follow_symlinks=False):
            for child in os.scandir(entry.path):
                yield from _walk(child)
    except OSError:
        return


class Rescanner:
    """The changes inotify cannot report, found by looking at the folder every `every` seconds."""

    def __init__(self, directory: Path, every: float = RESCAN_EVERY):
        self.directory, self.every = directory, every
        self._looked_at: float | None = None
        self._last: dict[str, tuple] = {}

    def changed(self, now: float) -> list[str]:
        """The entries written, made or removed since the last look ([] when no look is due)."""
        if self._looked_at is not None and now - self._looked_at < self.every:
            return []
        self._looked_at = now
        current = signatures(self.directory)
        changed = [name for name in current.keys() | self._last.keys() if current.get(name) != self._last.get(name)]
        self._last = current
        return sorted(changed)
