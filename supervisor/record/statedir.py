"""Safe paths under guardrun's state root: private modes, no symlinks, no swappable parents.

On a shared server the state root may sit where other users can write (`/tmp`, a
team folder). Whoever can write a directory can rename its entries: swap the job dir
for a symlink mid-run and the journal lands in their files, or feed `guardrun status`
a state of their making. So, before anything is created:

- every directory above the job dir (the state root and its ancestors, as written and
  as resolved) must be writable by nobody but us and root. A world- or group-writable
  directory passes only when it is sticky and owned by us or root, and the entry of
  our path in it is ours (or root's): then nobody else can rename that entry (`/tmp`,
  `/var/tmp`). A group-writable directory whose group is our user-private group (same
  name, no other member: Debian and Ubuntu give each user one, with umask 002) passes.
  Anything else is refused with StateDirError naming the directory (`guardrun run`
  exits 2);
- every directory guardrun creates is 0700 and every file 0600 whatever the umask
  (modes are set with fchmod after creating, since the umask only ever removes bits and
  a 0277 umask would remove ours too);
- the job dir is opened once with O_NOFOLLOW and its fd kept: the journal's files and
  the attempt folders are created relative to that fd (`dir_fd=`, O_NOFOLLOW), so a
  swap of the path after the check cannot redirect them;
- an entry of the wrong type where guardrun expects its own file (a directory named
  state.json, a file named attempts) is set aside as `NAME.damaged-N`, never deleted,
  and said.

The job's own processes keep their umask: what they write into an attempt folder is
private through the folder's 0700 mode, not through theirs.
"""
from __future__ import annotations

import errno
import grp
import os
import pwd
import secrets
import stat
import sys
from pathlib import Path
from typing import Callable

DIR_MODE, FILE_MODE = 0o700, 0o600
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


class StateDirError(Exception):
    """The state directory cannot be used safely (owner, symlink, permissions)."""


def warn(text: str) -> None:
    """One line on stderr (stdout stays the command's answer, JSON included)."""
    print(f"guardrun: warning: {text}", file=sys.stderr, flush=True)


# -- who can write a directory -----------------------------------------------------------
def _mine(uid: int) -> bool:
    return uid in (os.getuid(), 0)


def _private_group(gid: int) -> bool:
    """A user-private group: named like us, with no other member."""
    try:
        group, me = grp.getgrgid(gid), pwd.getpwuid(os.getuid()).pw_name
    except KeyError:
        return False
    return group.gr_name == me and set(group.gr_mem) <= {me}


def others_can_write(info: os.stat_result) -> str:
    """Why users other than us and root can rename entries of this directory ('' if none can)."""
    mode = stat.S_IMODE(info.st_mode)
    if not _mine(info.st_uid):
        return f"it belongs to uid {info.st_uid}"
    if mode & stat.S_IWOTH:
        return f"it is writable by everyone (mode {mode:04o})"
    if mode & stat.S_IWGRP and not _private_group(info.st_gid):
        return f"it is writable by group {info.st_gid} (mode {mode:04o})"
    return ""


def _check_entry(parent: Path, parent_info: os.stat_result, child: Path,
                 child_info: os.stat_result | None) -> None:
    """Refuse `child` (None: about to be created by us) if someone else can swap it in `parent`."""
    why = others_can_write(parent_info)
    if not why:
        return
    sticky = parent_info.st_mode & stat.S_ISVTX and _mine(parent_info.st_uid)
    if sticky and (child_info is None or _mine(child_info.st_uid)):
        return  # /tmp-like: only the entry's owner (or the folder's) can rename it
    raise StateDirError(f"{parent} is not safe for guardrun's state: {why}, so another user "
                        f"could replace {child} with a symlink of theirs; set GUARDRUN_STATE_DIR "
                        f"to a folder only you can write")


def check_ancestors(path: Path) -> None:
    """Refuse a `path` that another user could swap: see the module's docstring.

    Walks the path as written (each existing component lstat'ed, so a symlink is judged
    where it lies) and as resolved, up to `/`.
    """
    absolute = Path(os.path.abspath(path))
    for chain in (absolute, Path(os.path.realpath(absolute))):
        for child in (chain, *chain.parents):
            parent = child.parent
            if parent == child:
                break
            try:
                child_info: os.stat_result | None = os.lstat(child)
            except FileNotFoundError:
                child_info = None
            try:
                parent_info = os.stat(parent)
            except FileNotFoundError:
                continue  # created below, by us, 0700
            _check_entry(parent, parent_info, child, child_info)


# -- private dirs and files, relative to a held fd ----------------------------------------------
def open_dir(name: str, shown: Path, dir_fd: int | None = None, *, create: bool = True) -> int:
    """An fd of the directory `name` (relative to `dir_fd`), created 0700 if missing,
    refused if it is a symlink, not a directory, or not ours; loosened modes are tightened."""
    if create:
        try:
            os.mkdir(name, DIR_MODE, dir_fd=dir_fd)
        except FileExistsError:
            pass
    try:
        fd = os.open(name, _DIR_FLAGS, dir_fd=dir_fd)
    except OSError as err:
        if err.errno in (errno.ELOOP, errno.ENOTDIR):
            raise StateDirError(f"{shown} is a symlink or not a directory: refusing to use it") from None
        raise
    info = os.fstat(fd)
    if info.st_uid != os.getuid():
        os.close(fd)
        raise StateDirError(f"{shown} belongs to uid {info.st_uid}, not to you: refusing to use it")
    if stat.S_IMODE(info.st_mode) != DIR_MODE:
        os.fchmod(fd, DIR_MODE)
    return fd


def open_private_dir(path: Path) -> int:
    """Check `path`'s ancestors, create what is missing (0700), and return an fd of `path`
    itself, held by the caller: files are then made relative to it."""
    path = Path(os.path.abspath(path))
    check_ancestors(path)
    missing = []
    existing = path.parent
    while not existing.exists():
        missing.append(existing)
        existing = existing.parent
    for folder in reversed(missing):  # above the job dir: created 0700 too, never loosened
        try:
            os.mkdir(folder, DIR_MODE)
            os.chmod(folder, DIR_MODE)
        except FileExistsError:
            pass
    try:
        parent = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except NotADirectoryError:
        raise StateDirError(f"{path.parent} is not a directory: refusing to use it") from None
    try:
        return open_dir(path.name, path, parent)
    finally:
        os.close(parent)


def open_file(name: str, shown: Path, dir_fd: int | None, flags: int) -> int:
    """Open (creating 0600) the regular file `name` relative to `dir_fd`, never a symlink."""
    try:
        fd = os.open(name, flags | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, FILE_MODE, dir_fd=dir_fd)
    except OSError as err:
        if err.errno == errno.ELOOP:
            raise StateDirError(f"{shown} is a symlink: refusing to use it") from None
        raise
    info = os.fstat(fd)
    if not stat.S_ISREG(info.st_mode) or info.st_uid != os.getuid():
        os.close(fd)
        raise StateDirError(f"{shown} is not a regular file of yours: refusing to use it")
    if stat.S_IMODE(info.st_mode) != FILE_MODE:
        os.fchmod(fd, FILE_MODE)
    return fd


def replace_file(dir_fd: int, name: str, data: bytes) -> None:
    """Replace `name` in the directory `dir_fd` with `data` atomically (a reader sees the old
    file or the new one, never half): a 0600 temp file beside it, fsync, rename, all
    relative to the fd, so a swap of the directory's path cannot redirect it."""
    temp = f".{name}.{secrets.token_hex(6)}"
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                 FILE_MODE, dir_fd=dir_fd)
    try:
        try:
            os.fchmod(fd, FILE_MODE)
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(temp, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
    except BaseException:
        try:
            os.unlink(temp, dir_fd=dir_fd)
        except OSError:
            pass  # the first error is the one to report
        raise


def private_append(path: Path) -> int:
    """An O_APPEND fd of `path`, 0600, in a directory that is ours and private (checked on
    the very fd the file is opened from); for a file guardrun writes under the state dir."""
    parent = _open_checked_dir(path.parent)
    try:
        return open_file(path.name, path, parent, os.O_WRONLY | os.O_APPEND)
    finally:
        os.close(parent)


def _open_checked_dir(path: Path) -> int:
    try:
        fd = os.open(path, _DIR_FLAGS)
    except OSError as err:
        if err.errno in (errno.ELOOP, errno.ENOTDIR):
            raise StateDirError(f"{path} is a symlink or not a directory: refusing to use it") from None
        raise
    info = os.fstat(fd)
    if info.st_uid != os.getuid() or info.st_mode & 0o077:
        os.close(fd)
        raise StateDirError(f"{path} is not a private directory of yours: refusing to use it")
    return fd


# -- wrong types set aside ------------------------------------------------------------
_KINDS = {"file": stat.S_ISREG, "directory": stat.S_ISDIR, "socket": stat.S_ISSOCK}


def _kind(mode: int) -> str:
    if stat.S_ISLNK(mode):
        return "a symlink"
    for name, test in _KINDS.items():
        if test(mode):
            return f"a {name}"
    return "a special file"


def set_aside_wrong_types(dir_fd: int, shown: Path, expected: dict[str, str],
                          say: Callable[[str], None] = warn) -> list[str]:
    """Rename each entry of `expected` (name -> "file" | "directory" | "socket") that exists
    with another type to `NAME.damaged-N`; what was set aside. Nothing is deleted."""
    moved = []
    for name, want in expected.items():
        try:
            info = os.lstat(name, dir_fd=dir_fd)
        except FileNotFoundError:
            continue
        if _KINDS[want](info.st_mode) and not stat.S_ISLNK(info.st_mode):
            continue
        number = 1
        while _exists(f"{name}.damaged-{number}", dir_fd):
            number += 1
        aside = f"{name}.damaged-{number}"
        os.rename(name, aside, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
        say(f"{shown / name} is {_kind(info.st_mode)}, not a {want}: set aside as {aside}; "
            f"a new one is started")
        moved.append(name)
    return moved


def _exists(name: str, dir_fd: int) -> bool:
    try:
        os.lstat(name, dir_fd=dir_fd)
    except FileNotFoundError:
        return False
    return True


# -- reading what may be damaged --------------------------------------------------------
def open_regular(path: Path) -> int:
    """An O_RDONLY fd of the regular file `path`: FileNotFoundError if absent, OSError with
    a plain reason otherwise (a symlink is not followed, a FIFO is not waited on)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as err:
        if err.errno == errno.ELOOP:
            raise OSError(errno.ELOOP, "a symlink, not followed") from None
        raise
    info = os.fstat(fd)
    if not stat.S_ISREG(info.st_mode):
        os.close(fd)
        raise OSError(errno.EINVAL, f"not a regular file ({_kind(info.st_mode)})")
    return fd


def reason(err: OSError) -> str:
    return err.strerror or str(err)
