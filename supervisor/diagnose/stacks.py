"""Dump every Python process's stack with py-spy before a hung job is stopped.

A hang (a collective waiting for a rank that died in a way nobody noticed, a save stuck
on NFS, a DataLoader worker deadlock) leaves no traceback: the stacks at the moment of
the kill are the only evidence, and they are gone once the tree is killed. py-spy reads
another process's memory (process_vm_readv), so it needs ptrace rights over the job:
the same user, and where Yama's `kernel.yama.ptrace_scope` is 1 (Ubuntu's default) only
root or CAP_SYS_PTRACE may read a process that is not its own descendant; the job is
py-spy's sibling, not its child. Where the kernel refuses, py-spy's error lands in the
dump file instead and the journal says so.

Measured here (py-spy 0.4.3, CPython 3.11, an idle process): one dump takes ~30 ms.
The dumps run concurrently under one deadline, so a process stuck in the kernel (D
state, where py-spy itself may block) costs DUMP_TIMEOUT once, not once per rank.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from ..core.clock import Clock

#: Where a user may point guardrun at a py-spy binary ('' turns dumps off).
ENV = "GUARDRUN_PY_SPY"
DUMP_TIMEOUT = 20.0
#: Processes dumped at most: 8 ranks with a few loader workers each fit.
MAX_DUMPS = 64


@dataclass(frozen=True)
class Dump:
    pid: int
    path: Path
    ok: bool
    note: str = ""   # why it failed, or that it was cut off at the deadline


def find_py_spy() -> str | None:
    """py-spy from $GUARDRUN_PY_SPY, beside guardrun's interpreter (a venv), or on PATH."""
    explicit = os.environ.get(ENV)
    if explicit is not None:
        return explicit if explicit and os.access(explicit, os.X_OK) else None
    beside = Path(sys.executable).parent / "py-spy"
    if os.access(beside, os.X_OK):
        return str(beside)
    return shutil.which("py-spy")


def is_python(pid: int, proc_root: str = "/proc") -> bool:
    """Whether `pid` runs a Python interpreter (py-spy can read nothing else)."""
    try:
        exe = os.path.basename(os.readlink(f"{proc_root}/{pid}/exe"))
    except OSError:
        return False
    return exe.startswith(("python", "pypy"))


def dump_stacks(py_spy: str, pids: Sequence[int], out_dir: Path, clock: Clock,
                timeout: float = DUMP_TIMEOUT) -> list[Dump]:
    """`py-spy dump --pid P` for each pid into out_dir/<pid>.txt, all at once, one deadline."""
    out_dir.mkdir(parents=True, exist_ok=True)
    running = []
    for pid in list(pids)[:MAX_DUMPS]:
        path = out_dir / f"{pid}.txt"
        with open(path, "wb") as sink:
            child = subprocess.Popen([py_spy, "dump", "--pid", str(pid)], stdin=subprocess.DEVNULL,
                                     stdout=sink, stderr=subprocess.STDOUT)
        running.append((pid, path, child))
    deadline = clock.monotonic() + timeout
    dumps = []
    for pid, path, child in running:
        try:
            code = child.wait(timeout=max(0.0, deadline - clock.monotonic()))
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait()
            dumps.append(Dump(pid, path, False, f"py-spy did not answer within {timeout:g}s"))
            continue
        dumps.append(Dump(pid, path, code == 0, "" if code == 0 else _first_line(path)))
    return dumps


def _first_line(path: Path) -> str:
    try:
        with open(path, errors="replace") as handle:
            return handle.readline(300).strip()
    except OSError as err:
        return str(err)
