"""Host memory as procfs tells it: the job tree's figure, PSS to confirm, MemAvailable.

Two figures for the tree (FIELD_NOTES: 65 forked Python processes summed to 322 MB RSS):

- fast: (resident - shared) pages of /proc/PID/statm, i.e. RssAnon, summed. Cheap
  enough for every interval, but copy-on-write pages shared by forked processes (ranks,
  DataLoader workers) count once per process, so it over-counts.
- confirm: Pss_Anon + Pss_Shmem of /proc/PID/smaps_rollup. Each shared page counts once,
  split between its sharers; the kernel walks every page table to compute it (55 us
  for a 9 MB process here, bench/sampling.py; FIELD_NOTES: up to 1 ms for big ones),
  so the loop asks for it only near a limit.

The procfs root is a parameter so tests can hand over a fake /proc in a temp dir.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Iterable

from .proctree import GONE, ProcReader, ProcTree, exited, parse_stat, read_raw

PAGE_SIZE = os.sysconf("SC_PAGE_SIZE")

#: Mappings whose pages are shmem (tmpfs-backed): they count in the confirm figure
#: whole, where only their anonymous part would count in a file mapping.
_SHMEM_PREFIXES = (b"/dev/shm/", b"/SYSV", b"/memfd:", b"/dev/zero", b"[anon_shmem")


@dataclass(frozen=True)
class TreeSample:
    pids: tuple[int, ...]  # live pids of the tree, root first
    anon: int              # bytes, the fast figure (summed RssAnon)


@dataclass(frozen=True)
class HostMemory:
    total: int      # MemTotal, bytes
    available: int  # MemAvailable, bytes


class ProcfsMemory:
    """Memory readings for a process tree and the host, from a procfs root."""

    def __init__(self, proc_root: str = "/proc", page_size: int = PAGE_SIZE,
                 children_files: bool | None = None):
        self.proc_root = proc_root
        self.page_size = page_size
        self.children_files = children_files  # see ProcTree
        self._prefix = os.fsencode(proc_root.rstrip("/")) + b"/"
        self._trees: dict[int | None, ProcTree] = {}

    def sample_tree(self, root_pid: int | None, adopter: int | None = None,
                    exclude: Iterable[int] = (), reuse: bool = True) -> TreeSample:
        """Walk the tree and read each process's statm in the same pass (`reuse`: only
        the statm of the pids known, while no pid was handed out; see ProcTree.walk)."""
        tree = self._trees.get(adopter)
        if tree is None:
            tree = self._trees[adopter] = ProcTree(self.proc_root, adopter, self.children_files)
        walk = tree.walk(root_pid, exclude, probe=self._anon, reuse=reuse)
        return TreeSample(walk.live, sum(walk.values))

    def pss(self, pids: Iterable[int]) -> int:
        """Pss_Anon + Pss_Shmem of the pids, bytes; a pid that exited counts 0."""
        total = 0
        for pid in pids:
            try:
                total += self._pss_one(pid)
            except PermissionError:  # another user's process (a setuid helper): no smaps
                total += self._anon_now(pid)
            except GONE:
                continue
        return total

    def host(self) -> HostMemory:
        fields = _kb_fields(read_raw(self._prefix + b"meminfo", 8192))
        available = fields.get(b"MemAvailable")
        if available is None:  # Linux < 3.14: the estimate the kernel later made official
            available = fields[b"MemFree"] + fields.get(b"Buffers", 0) + fields.get(b"Cached", 0)
        return HostMemory(total=fields[b"MemTotal"] << 10, available=available << 10)

    def _anon(self, files: ProcReader, pid: int) -> int | None:
        """The walk's probe: RssAnon bytes, or None for a zombie (no mm: size 0)."""
        size, resident, shared, _rest = files.read(pid, b"statm", 256).split(b" ", 3)
        if size == b"0":
            return self._leaderless_anon(files, pid)
        return (int(resident) - int(shared)) * self.page_size

    def _anon_now(self, pid: int) -> int:
        """The fast figure of one process (statm is world-readable), 0 once it is gone."""
        try:
            _size, resident, shared, _rest = read_raw(self._prefix + b"%d/statm" % pid, 256).split(b" ", 3)
        except GONE:
            return 0
        return (int(resident) - int(shared)) * self.page_size

    def _leaderless_anon(self, files: ProcReader, pid: int) -> int | None:
        """A zombie (None), or a process whose main thread exited while others run on:
        its own statm reads zeros, a live thread's statm has the shared mm's figures."""
        if exited(parse_stat(files.read(pid, b"stat", 1024))):
            return None
        for tid in files.listdir(pid, b"task"):
            try:
                statm = read_raw(self._prefix + b"%d/task/%s/statm" % (pid, tid), 256).split()
            except GONE:
                continue
            if statm[0] != b"0":
                return (int(statm[1]) - int(statm[2])) * self.page_size
        return 0

    def _pss_one(self, pid: int) -> int:
        base = self._prefix + b"%d/" % pid
        try:
            fields = _kb_fields(read_raw(base + b"smaps_rollup", 4096))
        except FileNotFoundError:
            if not os.path.isdir(base):
                raise
            fields = None  # Linux < 4.14: no rollup
        if fields is not None and b"Pss_Anon" in fields:  # Linux >= 5.8
            return (fields[b"Pss_Anon"] + fields.get(b"Pss_Shmem", 0)) << 10
        if fields is not None and not fields.get(b"Rss"):
            return 0  # a zombie: no mm
        return _smaps_anon_pss(read_raw(base + b"smaps", 1 << 16)) << 10


def _kb_fields(text: bytes) -> dict[bytes, int]:
    """`Key:   123 kB` lines -> {b"Key": 123}; other lines are skipped."""
    fields = {}
    for line in text.splitlines():
        key, sep, rest = line.partition(b":")
        if sep and rest.endswith(b"kB"):
            fields[key] = int(rest[:-2])
    return fields


def _smaps_anon_pss(text: bytes) -> int:
    """Kilobytes of anonymous + shmem PSS from a full smaps, for kernels without
    Pss_Anon: a shmem mapping counts its whole Pss; any other, the anonymous share of
    its Pss (Pss x Anonymous / Rss, exact for pure anonymous mappings)."""
    total = 0.0
    shmem, values = False, {}
    for line in text.splitlines():
        head, _sep, rest = line.partition(b" ")
        if not head.endswith(b":"):  # a mapping's header: `start-end perms offset dev inode path`
            total += _mapping_share(shmem, values)
            parts = line.split(None, 5)
            shmem = len(parts) == 6 and parts[5].startswith(_SHMEM_PREFIXES)
            values = {}
        elif head in (b"Rss:", b"Pss:", b"Anonymous:"):
            values[head] = int(rest.split()[0])
    total += _mapping_share(shmem, values)
    return int(total)


def _mapping_share(shmem: bool, values: dict[bytes, int]) -> float:
    pss, rss = values.get(b"Pss:", 0), values.get(b"Rss:", 0)
    if shmem:
        return pss
    if rss <= 0:
        return 0.0
    return pss * min(values.get(b"Anonymous:", 0), rss) / rss
