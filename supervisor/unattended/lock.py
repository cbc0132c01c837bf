"""One supervisor per job: an fcntl lock on `<state dir>/<job>/supervisor.lock`.

Why a POSIX record lock and not a pid file: the kernel drops the lock when its holder
dies, however it dies (SIGKILL, the OOM killer), so a stale lock cannot exist, and
F_GETLK names the holder's pid from the kernel, so a second `guardrun run` of the job can
say who holds it without trusting a file's contents. The lock is not inherited across
fork (the job's processes never hold it) and is kept across exec.

Caveat of POSIX locks: closing *any* fd of the file in the holding process drops the
lock, so only this module opens the file, once, in the holder.

The file's contents (pid, start token, time) are for people and for `guardrun start`,
which waits for its daemon's token to appear; the lock itself is the truth.
"""
from __future__ import annotations

import errno
import fcntl
import json
import os
import stat
import struct
import time
from dataclasses import dataclass
from pathlib import Path

from ..record.journal import StateDirError

LOCK_NAME = "supervisor.lock"

#: struct flock on 64-bit Linux (x86_64, aarch64): short l_type, short l_whence,
#: off_t l_start, off_t l_len, pid_t l_pid, padded to 32 bytes.
_FLOCK = "hhqqi4x"


class LockHeld(Exception):
    """Another live process supervises this job."""

    def __init__(self, pid: int | None, path: Path):
        self.pid = pid
        self.path = path
        who = f"pid {pid}" if pid else "another process"
        super().__init__(f"already supervised by {who} (lock {path})")


@dataclass(frozen=True)
class LockInfo:
    pid: int | None  # who wrote the file last (the holder while the lock is held)
    token: str
    since: str


def lock_path(directory: Path) -> Path:
    return directory / LOCK_NAME


def _open(path: Path, flags: int) -> int:
    """Open the lock file refusing a symlink or another user's file (a shared server)."""
    fd = os.open(path, flags | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    info = os.fstat(fd)
    if not stat.S_ISREG(info.st_mode) or info.st_uid != os.getuid():
        os.close(fd)
        raise StateDirError(f"{path} is not a regular file of yours: refusing to use it")
    if flags & os.O_RDWR and stat.S_IMODE(info.st_mode) != 0o600:
        os.fchmod(fd, 0o600)  # an older guardrun's, or made under a loose umask
    return fd


class JobLock:
    """The job's lock, held by the running supervisor for as long as it lives."""

    def __init__(self, directory: Path):
        self.path = lock_path(directory)
        self._fd: int | None = None

    def acquire(self, token: str = "") -> None:
        """Take the lock without waiting; LockHeld (naming the holder) if taken."""
        try:
            fd = _open(self.path, os.O_RDWR | os.O_CREAT)
        except OSError as err:
            if err.errno == errno.ELOOP:
                raise StateDirError(f"{self.path} is a symlink: refusing to use it") from None
            raise
        try:
            fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as err:
            os.close(fd)
            if err.errno in (errno.EACCES, errno.EAGAIN):
                raise LockHeld(holder(self.path.parent), self.path) from None
            raise
        self._fd = fd
        record = {"pid": os.getpid(), "token": token, "since": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
        os.ftruncate(fd, 0)
        os.pwrite(fd, (json.dumps(record) + "\n").encode(), 0)

    def release(self) -> None:
        """Drop the lock (closing the fd does it). The file stays, for `guardrun start`."""
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> "JobLock":
        return self

    def __exit__(self, *_exc) -> None:
        self.release()


def holder(directory: Path) -> int | None:
    """The pid holding the job's lock now (from the kernel), or None when nobody does."""
    path = lock_path(directory)
    try:
        fd = _open(path, os.O_RDONLY | os.O_NONBLOCK)
    except (OSError, StateDirError):
        return None  # absent, a symlink, a FIFO, not ours: no supervisor of ours holds it
    try:
        if struct.calcsize("q") != 8 or struct.calcsize(_FLOCK) != 32:
            return _holder_by_trying(path)
        probe = struct.pack(_FLOCK, fcntl.F_WRLCK, os.SEEK_SET, 0, 0, 0)
        kind, _whence, _start, _len, pid = struct.unpack(_FLOCK, fcntl.fcntl(fd, fcntl.F_GETLK, probe))
        return None if kind == fcntl.F_UNLCK else pid
    finally:
        os.close(fd)


def _holder_by_trying(path: Path) -> int | None:
    """Where struct flock's layout is unknown: read the pid the holder wrote, and trust it
    only while the process lives (a fallback; 64-bit Linux takes the F_GETLK path)."""
    info = read_info(path.parent)
    if info is None or info.pid is None:
        return None
    try:
        os.kill(info.pid, 0)
    except ProcessLookupError:
        return None
    except PermissionError:
        pass
    return info.pid


def read_info(directory: Path) -> LockInfo | None:
    """What the last holder wrote into the lock file, or None if nothing readable is there."""
    try:
        fd = _open(lock_path(directory), os.O_RDONLY | os.O_NONBLOCK)
    except (OSError, StateDirError):
        return None
    try:
        record = json.loads(os.read(fd, 4096) or b"null")
    except ValueError:
        return None
    finally:
        os.close(fd)
    if not isinstance(record, dict):
        return None
    pid = record.get("pid")
    return LockInfo(pid if isinstance(pid, int) else None, str(record.get("token", "")),
                    str(record.get("since", "")))


__all__ = ["JobLock", "LockHeld", "LockInfo", "holder", "lock_path", "read_info"]
