"""The folder every node of a multi-node job sees (`nodes.shared_dir`): its files, nothing more.

    <shared_dir>/<job>/attempt-<N>/<stem>-<rank>.json

One writer per file: only the node of that rank writes `<stem>-<rank>.json`, and it writes
it whole (a temp file beside it, fsync, rename: statedir.replace_file), so a reader on
any node sees the old file, the new one, or none, never half. Stems in use: `node` (how
a node's part of the attempt ended: run.nodes), `stop` (a node is stopping its part).
Readers poll: inotify does not see another NFS client's writes. What the files mean, the
barrier and the attempt numbers, is run.nodes's.
"""
from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from ..core.clock import Clock
from .statedir import replace_file

#: How often a barrier looks for the files it waits on (seconds): one listing per look.
POLL_EVERY = 1.0

_ATTEMPT = re.compile(r"attempt-([0-9]+)")
_FILE = re.compile(r"([a-z_]+)-([0-9]+)\.json")


class SharedDirError(Exception):
    """The shared folder could not be written or read: the path and the system's reason."""


@dataclass(frozen=True)
class Gathered:
    """What a barrier found: each rank's file (parsed), and the ranks it waited on in vain."""

    found: dict[int, dict[str, Any]]
    missing: tuple[int, ...] = ()


class SharedDir:
    """One job's part of the shared folder, as node `rank` of `count` uses it."""

    def __init__(self, root: Path, job: str, count: int, rank: int):
        self.root, self.count, self.rank = Path(root), count, rank
        self.dir = self.root / job

    def attempt_dir(self, attempt: int) -> Path:
        return self.dir / f"attempt-{attempt}"

    def problem(self) -> str:
        """Why this node cannot write the shared folder ("" when it can): checked at the start
        by writing and removing a probe file of its own."""
        probe = self.dir / f".probe-{self.rank}"
        try:
            os.makedirs(self.dir, exist_ok=True)
            fd = _open_dir(self.dir)
            try:
                replace_file(fd, probe.name, b"{}\n")
            finally:
                os.close(fd)
            os.unlink(probe)
        except OSError as err:
            return f"nodes.shared_dir {self.root} cannot be written from this node: {_reason(err)}"
        return ""

    def put(self, attempt: int, stem: str, data: dict[str, Any]) -> None:
        """Write this node's `<stem>-<rank>.json` of `attempt`, whole (SharedDirError: why not)."""
        folder = self.attempt_dir(attempt)
        try:
            os.makedirs(folder, exist_ok=True)
            fd = _open_dir(folder)
            try:
                replace_file(fd, f"{stem}-{self.rank}.json", (json.dumps(data, default=str) + "\n").encode())
            finally:
                os.close(fd)
        except OSError as err:
            raise SharedDirError(f"cannot write {folder / f'{stem}-{self.rank}.json'}: {_reason(err)}") from None

    def ranks(self, attempt: int, stem: str) -> set[int]:
        """The ranks whose `<stem>-<rank>.json` of `attempt` exists: one listing of the folder
        (cheap enough for every watch interval); none when the folder is not there (yet)."""
        try:
            names = os.listdir(self.attempt_dir(attempt))
        except OSError:
            return set()
        return {int(m.group(2)) for m in map(_FILE.fullmatch, names) if m and m.group(1) == stem}

    def read(self, attempt: int, stem: str, rank: int) -> dict[str, Any]:
        """Rank `rank`'s file (SharedDirError: missing, unreadable, or not a JSON object)."""
        path = self.attempt_dir(attempt) / f"{stem}-{rank}.json"
        try:
            data = json.loads(path.read_bytes())
        except OSError as err:
            raise SharedDirError(f"cannot read {path}: {_reason(err)}") from None
        except ValueError as err:
            raise SharedDirError(f"{path} is not JSON: {err}") from None
        if not isinstance(data, dict):
            raise SharedDirError(f"{path} is not a JSON object")
        return data

    def gather(self, attempt: int, stem: str, timeout: float, clock: Clock,
               should_stop: Callable[[], bool] = lambda: False, every: float = POLL_EVERY) -> Gathered:
        """Wait up to `timeout` for every rank's `<stem>` file of `attempt` (this node's too),
        looking every `every` seconds; a stop asked for ends the wait early. A file that
        cannot be read counts as missing (the caller says which, with run.nodes's evidence)."""
        deadline = clock.monotonic() + timeout
        wanted = set(range(self.count))
        while True:
            present = self.ranks(attempt, stem) & wanted
            if present == wanted or clock.monotonic() >= deadline or should_stop():
                break
            clock.sleep(min(every, deadline - clock.monotonic()))
        found = {}
        for rank in sorted(present):
            try:
                found[rank] = self.read(attempt, stem, rank)
            except SharedDirError:
                continue
        return Gathered(found, tuple(sorted(wanted - set(found))))

    def attempts(self) -> list[int]:
        """The attempt numbers that have a folder, ascending."""
        try:
            names = os.listdir(self.dir)
        except OSError:
            return []
        return sorted(int(m.group(1)) for m in map(_ATTEMPT.fullmatch, names) if m)


def _open_dir(path: Path) -> int:
    return os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)


def _reason(err: OSError) -> str:
    return err.strerror or str(err)
