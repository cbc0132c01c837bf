"""Which torch extensions the attempt's tree was building, and clearing exactly their locks.

torch's JIT extension builder (torch.utils.cpp_extension, used by DeepSpeed for its CPU
`shm_comm` op and others) guards each build folder with a plain `lock` file (FileBaton):
the builder creates it with O_EXCL, runs ninja in the folder, and removes it. A builder
killed mid-compile (guardrun stopping the tree, an OOM kill) leaves the file, and every
later process that needs the op waits for it forever: a relaunch hangs at DeepSpeed's
"Setting accelerator" line with no error.

The file is empty and nothing holds it open, so only the tree can say whose it is. Just
before the stop (`find_builds`), every process of the attempt's tree is looked at: one whose
cwd lies in `<root>/<ext>/` (ninja and the compilers it runs work there), or a compiler
(cc1plus, ninja, nvcc, ...) whose arguments name such a folder, is building `<ext>`
(checked on a real DeepSpeed build here: ninja, sh, c++ and cc1plus in deepspeed_shm_comm/
from 1.2 s to 30 s, then collect2 and ld; the Python builder's own cwd is elsewhere). Once
the tree is gone, those folders' locks alone are removed (`clear_build_locks`). A lock
taken by anyone else (the same user's concurrent DeepSpeed build, another `make test`) is
left: removing it made that build's `baton.release()` fail with FileNotFoundError, four
times in 15 minutes on one machine. The folders are opened one name at a time from the
root with O_NOFOLLOW, so a symlink planted in a shared extensions dir is never followed,
and only a regular file named `lock`, of this uid, made since the attempt began, is removed.

Known gap: a builder killed between ninja's exit and its baton.release() (milliseconds)
has no process in the folder any more, and its lock is left (`hang_after` then catches the
relaunch waiting on it).
"""
from __future__ import annotations

import errno
import os
import re
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Mapping

from ..core import events

LOCK = "lock"
#: Programs of a build: ninja and what it runs for torch's C++/CUDA extensions.
COMPILERS = frozenset({"cc1plus", "cc1", "cc", "c++", "g++", "gcc", "clang", "clang++", "ninja",
                       "nvcc", "cicc", "ptxas", "hipcc", "ld", "collect2"})
#: A cross compiler's name ends like one: x86_64-linux-gnu-g++.
_COMPILER_SUFFIXES = ("-g++", "-gcc", "-c++", "-cc", "-ld")
#: The <python>_<device> level torch adds under the default root: py311_cpu, py312_cu121.
_PY_TAG = re.compile(r"py\d+[a-z]*_\w+")
#: A compiler's command line can be long (every -I of the build); the rest is not read.
CMDLINE_MAX = 1 << 17


@dataclass(frozen=True)
class Build:
    """A process of the tree working in an extension's build folder."""

    folder: tuple[str, ...]  # under the extensions root: ("deepspeed_shm_comm",) or ("py311_cpu", "op")
    pid: int
    program: str             # cc1plus, ninja, python3.11: argv[0]'s base name, or comm

    @property
    def extension(self) -> str:
        return self.folder[-1]

    @property
    def compiler(self) -> bool:
        return is_compiler(self.program)


def extensions_root(env: Mapping[str, str]) -> Path:
    """Where torch builds JIT extensions: $TORCH_EXTENSIONS_DIR, else the user cache."""
    if env.get("TORCH_EXTENSIONS_DIR"):
        return Path(env["TORCH_EXTENSIONS_DIR"])
    cache = env.get("XDG_CACHE_HOME") or str(Path(env.get("HOME", "~")).expanduser() / ".cache")
    return Path(cache) / "torch_extensions"


def is_compiler(name: str) -> bool:
    return name in COMPILERS or name.endswith(_COMPILER_SUFFIXES)


def build_folder(root: str, path: str) -> tuple[str, ...] | None:
    """The build folder that `path` lies in, as names under `root` (both absolute); None
    when it is outside `root`, is `root` itself, or climbs out of it with `..`."""
    root = root.rstrip("/")
    if not path.startswith(root + "/"):
        return None
    parts = [p for p in path[len(root) + 1:].split("/") if p not in ("", ".")]
    if not parts or ".." in parts:
        return None
    if _PY_TAG.fullmatch(parts[0]):
        return tuple(parts[:2]) if len(parts) >= 2 else None
    return (parts[0],)


def program_name(argv0: str, comm: str) -> str:
    """What the process runs: a compiler's name if argv[0] or comm is one, else argv[0]'s."""
    base = os.path.basename(argv0)
    for name in (base, comm):
        if is_compiler(name):
            return name
    return base or comm


def folders_of(roots: Iterable[str], cwd: str, argv: list[str], program: str) -> set[tuple[str, ...]]:
    """The build folders a process works in: its cwd's, and for a compiler, those its
    arguments name (`-o /root/op/x.o`, `-I/root/op`)."""
    found = set()
    for root in roots:
        folder = build_folder(root, cwd)
        if folder is not None:
            found.add(folder)
        if not is_compiler(program):
            continue
        for arg in argv[1:]:
            start = arg.find(root.rstrip("/") + "/")
            folder = build_folder(root, arg[start:]) if start >= 0 else None
            if folder is not None:
                found.add(folder)
    return found


def find_builds(root: Path, pids: Iterable[int], proc_root: str = "/proc") -> tuple[Build, ...]:
    """The tree's processes working in a build folder under `root`. Call before the stop.

    A cwd from /proc is resolved by the kernel, so it is compared with the root's real
    path; arguments are compared with both its written and its real path. Cost measured
    here: 0.7 ms for 64 processes (a readlink and two small reads each), once per attempt.
    """
    absolute = os.path.abspath(root)
    roots = sorted({absolute, os.path.realpath(absolute)})
    found = []
    for pid in pids:
        base = f"{proc_root}/{pid}"
        try:
            cwd = os.readlink(f"{base}/cwd")
        except OSError:
            cwd = ""  # exited, or not ours to read
        argv = _read(f"{base}/cmdline", CMDLINE_MAX).split("\0")
        program = program_name(argv[0], _read(f"{base}/comm", 64).strip())
        for folder in sorted(folders_of(roots, cwd, argv, program)):
            found.append(Build(folder, pid, program))
    return tuple(found)


def _read(path: str, size: int) -> str:
    try:
        with open(path, "rb") as handle:
            return handle.read(size).rstrip(b"\0").decode("utf-8", "replace")
    except OSError:
        return ""


def compiling(builds: Iterable[Build]) -> tuple[str, ...]:
    """The extensions a compiler of the tree was building, in order: for the root cause."""
    return tuple(dict.fromkeys(b.extension for b in builds if b.compiler))


def clear_build_locks(root: Path, builds: Iterable[Build], since: float, emit: Callable[..., None],
                      attempt: int) -> list[Path]:
    """Remove the locks of the folders the stopped attempt was building; journal each.

    Call only once its tree is gone. `since`: when the attempt was spawned (wall clock,
    compared with the lock's mtime). A lock already gone (the build released it) is
    nothing to say; one left for a reason is journaled as `extension_lock.kept`.
    """
    removed = []
    for folder in sorted({b.folder for b in builds}):
        path = root.joinpath(*folder, LOCK)
        why = _unlink_own_lock(root, folder, since)
        if why == "":
            removed.append(path)
            emit(events.EXTENSION_LOCK_CLEARED, attempt=attempt, path=str(path))
        elif why != "gone":
            emit(events.EXTENSION_LOCK_KEPT, attempt=attempt, path=str(path), why=why)
    return removed


def _unlink_own_lock(root: Path, folder: tuple[str, ...], since: float) -> str:
    """'' when `<root>/<folder>/lock` was removed; else why not ('gone': nothing there).

    The root is the job's own setting and is opened as given; below it each name is
    opened with O_NOFOLLOW relative to the one above, so no symlink is followed.
    """
    fds: list[int] = []
    name = str(root)
    try:
        fds.append(os.open(root, os.O_RDONLY | os.O_DIRECTORY))
        for name in folder:
            fds.append(os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=fds[-1]))
        name = LOCK
        info = os.stat(LOCK, dir_fd=fds[-1], follow_symlinks=False)
        problem = _not_own(info, since)
        if problem:
            return problem
        os.unlink(LOCK, dir_fd=fds[-1])
        return ""
    except FileNotFoundError:
        return "gone"
    except OSError as err:
        if err.errno in (errno.ELOOP, errno.ENOTDIR):
            return f"{name} is a symlink or not a directory: not followed"
        return f"{name}: {err.strerror}"
    finally:
        for fd in fds:
            os.close(fd)


def _not_own(info: os.stat_result, since: float) -> str:
    """'' when the lock can be the attempt's own, else why it is not."""
    if not stat.S_ISREG(info.st_mode):
        return "not a regular file"
    if info.st_uid != os.geteuid():
        return f"owned by uid {info.st_uid}"
    if info.st_mtime < since:
        return "older than the attempt"
    return ""
