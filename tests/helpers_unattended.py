"""Shared by the tests of detached runs, control, systemd and tmux: real `guardrun` calls."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

from conftest import REPO

GUARDRUN = str(Path(sys.executable).parent / "guardrun")
GATE = REPO / "tests" / "jobs" / "gate.py"


def gate_recipe(tmp_path: Path, *, name: str = "gate", go: Path | None = None, extra_args=(),
                stop_grace: str = "10s", interval: float = 0.1) -> tuple[Path, Path]:
    """A recipe whose job waits for the `go` file; returns (recipe, go)."""
    go = go or tmp_path / "go"
    args = ["--go", str(go), *extra_args]
    path = tmp_path / f"{name}.yaml"
    path.write_text(textwrap.dedent(f"""\
        launcher: python
        script: {GATE}
        args: {json.dumps(args)}
        monitor: {{interval: {interval}}}
        stop_grace: {stop_grace}
        ladder: []
        restarts: {{max: 0}}
        """))
    return path, go


def guardrun(*argv: str, timeout: float = 60, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run([GUARDRUN, *argv], capture_output=True, text=True, timeout=timeout,
                          stdin=subprocess.DEVNULL, **kwargs)


def state(state_dir: Path, job: str = "gate") -> dict:
    try:
        return json.loads((state_dir / job / "state.json").read_text())
    except (FileNotFoundError, ValueError):
        return {}


def output_log(state_dir: Path, job: str = "gate", attempt: int = 1) -> str:
    try:
        return (state_dir / job / "attempts" / str(attempt) / "output.log").read_text()
    except FileNotFoundError:
        return ""


def running(pid: int) -> bool:
    """Alive and not a zombie."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as handle:
            return handle.read().rsplit(b")", 1)[1].split()[0] != b"Z"
    except FileNotFoundError:
        return False


def stat_fields(pid: int) -> list[bytes]:
    """/proc/PID/stat after `pid (comm)`: [state, ppid, pgrp, session, tty_nr, ...]."""
    with open(f"/proc/{pid}/stat", "rb") as handle:
        return handle.read().rsplit(b")", 1)[1].split()


def supervisor_pid(start_output: str) -> int:
    marker = "supervisor pid "
    return int(start_output.split(marker, 1)[1].split(",", 1)[0])


def environ_of(pid: int) -> dict[str, str]:
    with open(f"/proc/{pid}/environ", "rb") as handle:
        pairs = [item.split(b"=", 1) for item in handle.read().split(b"\0") if b"=" in item]
    return {os.fsdecode(k): os.fsdecode(v) for k, v in pairs}
