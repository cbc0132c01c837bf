"""Control of a running supervisor from the CLI, through a Unix socket in the job's state dir.

`<state dir>/<job>/control.sock` is a stream socket, mode 0600, in a 0700 directory; the
server also checks the peer's uid (SO_PEERCRED) and the client checks the server's, so
on a shared server neither side talks to another user's process. A socket path or
directory that is a symlink or belongs to someone else is refused.

One request per connection, one line each way: the command (`stop`, `stop-now`,
`status`) and a JSON reply. The server is a thread that only *records* a stop in
`signals.Requests`, as the signal handlers do; the loop acts on it at its next turn.

Paths are reached through an O_PATH fd of the directory (`/proc/self/fd/N/control.sock`):
a sockaddr_un holds 108 bytes, which a deep home directory can exceed, and the socket
is then created in the very directory that was checked, not one swapped in after.
"""
from __future__ import annotations

import json
import os
import selectors
import socket
import stat
import struct
import threading
from pathlib import Path
from typing import Callable

from ..core.signals import Requests
from ..record.journal import StateDirError

SOCKET_NAME = "control.sock"
COMMANDS = ("stop", "stop-now", "status")
#: A client that connects and says nothing is dropped after this long, so it cannot
#: hold up the next request (the server handles one at a time).
CLIENT_TIMEOUT = 2.0
MAX_REQUEST = 256


class ControlError(Exception):
    """The supervisor cannot be reached, or refused the request."""


def _open_dir(directory: Path) -> int:
    """An O_PATH fd of `directory`, refusing a symlink or another user's directory."""
    try:
        fd = os.open(directory, os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError as err:
        raise StateDirError(f"{directory}: {err.strerror}: refusing to use it") from None
    info = os.fstat(fd)
    if info.st_uid != os.getuid() or info.st_mode & 0o077:
        os.close(fd)
        raise StateDirError(f"{directory} is not a private directory of yours: refusing to use it")
    return fd


def _check_socket(dir_fd: int, directory: Path, missing_ok: bool) -> os.stat_result | None:
    """lstat the socket path: None if absent (and allowed), StateDirError if it is not ours."""
    try:
        info = os.lstat(SOCKET_NAME, dir_fd=dir_fd)
    except FileNotFoundError:
        if missing_ok:
            return None
        raise ControlError(f"no control socket in {directory}: is the supervisor running?") from None
    if not stat.S_ISSOCK(info.st_mode) or info.st_uid != os.getuid():
        raise StateDirError(f"{directory / SOCKET_NAME} is not a socket of yours "
                            f"(a symlink or another user's file): refusing to use it")
    return info


def peer_uid(sock: socket.socket) -> int:
    """The uid of the process at the other end (struct ucred: pid, uid, gid)."""
    _pid, uid, _gid = struct.unpack("3i", sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED,
                                                          struct.calcsize("3i")))
    return uid


def answer(command: str, requests: Requests, snapshot: Callable[[], dict]) -> dict:
    """The reply to one command; a stop is only recorded (the loop acts on it)."""
    if command == "stop":
        requests.ask_stop("guardrun stop")
        return {"ok": True, "pid": os.getpid(), "message": "stopping the job gracefully"}
    if command == "stop-now":
        requests.kill_now = True
        requests.ask_stop("guardrun stop --now")
        return {"ok": True, "pid": os.getpid(), "message": "killing the job now"}
    if command == "status":
        return {"ok": True, "pid": os.getpid(), "state": snapshot()}
    return {"ok": False, "error": f"unknown command {command!r}; expected one of {', '.join(COMMANDS)}"}


class ControlServer:
    """Serves the control socket from a daemon thread while the loop runs."""

    def __init__(self, directory: Path, requests: Requests, snapshot: Callable[[], dict]):
        self.directory = directory
        self._requests = requests
        self._snapshot = snapshot
        self._dir_fd = _open_dir(directory)
        self._listener: socket.socket | None = None
        self._inode: int | None = None
        self._wake_r, self._wake_w = os.pipe()
        self._thread = threading.Thread(target=self._serve, name="guardrun-control", daemon=True)

    @property
    def path(self) -> Path:
        return self.directory / SOCKET_NAME

    def start(self) -> "ControlServer":
        """Bind (replacing a socket a dead supervisor left, never anything else) and serve."""
        if _check_socket(self._dir_fd, self.directory, missing_ok=True) is not None:
            os.unlink(SOCKET_NAME, dir_fd=self._dir_fd)  # we hold the job's lock: it is stale
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        listener.bind(f"/proc/self/fd/{self._dir_fd}/{SOCKET_NAME}")
        os.chmod(SOCKET_NAME, 0o600, dir_fd=self._dir_fd)
        self._inode = os.lstat(SOCKET_NAME, dir_fd=self._dir_fd).st_ino
        listener.listen(8)
        self._listener = listener
        self._thread.start()
        return self

    def close(self) -> None:
        """Stop serving and remove the socket (if it is still the one we bound)."""
        if self._listener is not None:
            os.write(self._wake_w, b"x")
            self._thread.join(CLIENT_TIMEOUT + 1.0)
            self._listener.close()
            self._listener = None
            try:
                if os.lstat(SOCKET_NAME, dir_fd=self._dir_fd).st_ino == self._inode:
                    os.unlink(SOCKET_NAME, dir_fd=self._dir_fd)
            except FileNotFoundError:
                pass
        for fd in (self._wake_r, self._wake_w, self._dir_fd):
            os.close(fd)
        self._wake_r = self._wake_w = self._dir_fd = -1

    def _serve(self) -> None:
        with selectors.DefaultSelector() as selector:
            selector.register(self._listener, selectors.EVENT_READ)
            selector.register(self._wake_r, selectors.EVENT_READ)
            while True:
                ready = {key.fileobj for key, _ in selector.select()}
                if self._wake_r in ready:
                    return
                try:
                    conn, _addr = self._listener.accept()
                except OSError:
                    continue
                with conn:
                    self._handle(conn)

    def _handle(self, conn: socket.socket) -> None:
        try:
            conn.settimeout(CLIENT_TIMEOUT)
            command = _read_line(conn)  # read first, so even a refused client gets the reply
            if peer_uid(conn) != os.getuid():
                reply = {"ok": False, "error": "refused: you are not the job's owner"}
            else:
                reply = answer(command, self._requests, self._snapshot)
            conn.sendall((json.dumps(reply, default=str) + "\n").encode())
        except OSError:
            return  # the client went away or stalled: nothing to tell it


def _read_line(conn: socket.socket) -> str:
    data = b""
    while b"\n" not in data and len(data) < MAX_REQUEST:
        chunk = conn.recv(MAX_REQUEST)
        if not chunk:
            break
        data += chunk
    return data.split(b"\n", 1)[0].decode("utf-8", "replace").strip()


def request(directory: Path, command: str, timeout: float = 5.0) -> dict:
    """Send one command to the job's supervisor and return its reply (ControlError if none)."""
    dir_fd = _open_dir(directory)
    try:
        _check_socket(dir_fd, directory, missing_ok=False)
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC) as sock:
            sock.settimeout(timeout)
            try:
                sock.connect(f"/proc/self/fd/{dir_fd}/{SOCKET_NAME}")
            except (ConnectionRefusedError, FileNotFoundError):
                raise ControlError(f"nobody answers on {directory / SOCKET_NAME}: "
                                   f"the supervisor is gone") from None
            if peer_uid(sock) != os.getuid():
                raise StateDirError(f"{directory / SOCKET_NAME} is served by another user: refusing it")
            sock.sendall(command.encode() + b"\n")
            reply = _read_reply(sock)
    except (socket.timeout, OSError) as err:
        raise ControlError(f"{directory / SOCKET_NAME}: {err}") from None
    finally:
        os.close(dir_fd)
    if not reply.get("ok"):
        raise ControlError(str(reply.get("error", "refused")))
    return reply


def _read_reply(sock: socket.socket) -> dict:
    chunks = []
    while chunk := sock.recv(65536):
        chunks.append(chunk)
    try:
        reply = json.loads(b"".join(chunks) or b"null")
    except ValueError:
        reply = None
    if not isinstance(reply, dict):
        raise ControlError("the supervisor sent no valid reply")
    return reply
