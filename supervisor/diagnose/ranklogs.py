"""Follow DeepSpeed's per-rank log files into the attempt's output stream.

`deepspeed --enable_each_rank_log DIR` sends each rank's stdout and stderr to
`DIR/<YYYYmmddHHMMSS>_rank<N>.log` and nothing to the console
(deepspeed/launcher/launch.py, 0.19.8: `Popen(cmd, stdout=log_fd, stderr=log_fd)`), so
without following the files guardrun would see no progress, no loss and no traceback.
Each file is read by its own thread through `lines.iter_lines` (bounded lines, as for
the pipe) from a source that waits for more data until the attempt is over; every line
reaches `on_line(rank, line)`.
"""
from __future__ import annotations

import os
import re
import threading
from pathlib import Path
from typing import Callable

from .lines import iter_lines

_NAME = re.compile(r"_rank(\d{1,5})\.log$")
#: Files followed at most (one thread each): one per local rank.
MAX_FILES = 64
#: How often a quiet file and the folder are looked at again (seconds).
POLL = 0.1


class _Growing:
    """A file read as it grows: read() waits for data and returns b'' only once `done` is set
    and everything written has been read (the writers are gone by then)."""

    def __init__(self, path: Path, done: threading.Event):
        self._handle = open(path, "rb", buffering=0)
        self._done = done

    def read(self, size: int) -> bytes:
        while True:
            data = self._handle.read(size)
            if data:
                return data
            if self._done.is_set():
                return self._handle.read(size) or b""
            self._done.wait(POLL)

    def close(self) -> None:
        self._handle.close()


class RankLogs:
    """Finds `*_rank<N>.log` files in a folder as they appear and follows each one."""

    def __init__(self, directory: Path, on_line: Callable[[int, str], None]):
        self.directory = directory
        self.on_line = on_line
        self._done = threading.Event()
        self._followed: dict[str, threading.Thread] = {}
        self._finder = threading.Thread(target=self._find, name="guardrun-ranklogs", daemon=True)

    def start(self) -> "RankLogs":
        self._finder.start()
        return self

    def stop(self, timeout: float) -> bool:
        """Read what is left and stop (call once the job's tree is gone); False if a reader hung."""
        self._done.set()
        self._finder.join(timeout)
        self._scan()  # files created after the finder's last look
        for thread in list(self._followed.values()):
            thread.join(timeout)
        return not any(thread.is_alive() for thread in self._followed.values())

    def _find(self) -> None:
        while not self._done.is_set():
            self._scan()
            self._done.wait(POLL)

    def _scan(self) -> None:
        try:
            names = sorted(os.listdir(self.directory))
        except OSError:
            return  # the launcher creates the folder when it starts
        for name in names:
            found = _NAME.search(name)
            if found is None or name in self._followed or len(self._followed) >= MAX_FILES:
                continue
            thread = threading.Thread(target=self._follow, args=(self.directory / name, int(found.group(1))),
                                      name=f"guardrun-rank{found.group(1)}", daemon=True)
            self._followed[name] = thread
            thread.start()

    def _follow(self, path: Path, rank: int) -> None:
        try:
            source = _Growing(path, self._done)
        except OSError:
            return
        try:
            for line in iter_lines(source):
                self.on_line(rank, line)
        finally:
            source.close()
