"""A real two-node SLURM on this one machine, for tests: munged, slurmctld, and two slurmd (n1, n2).

The configuration FIELD_NOTES checked (Debian bookworm's slurmd slurmctld munge, Slurm 22.05):
both nodes on 127.0.0.1 with their own ports, per-node paths with %n, proctrack/linuxproc,
task/none. Everything lives in one temporary folder (its own munge socket, free ports), so it
does not meet a SLURM or munged that something else runs here. The daemons are stopped by
their pid files, and `cluster` checks they are gone.

    with cluster(tmp_path) as env:      # env: SLURM_CONF for srun/sbatch/scontrol
        subprocess.run(["srun", "-N2", "-n2", ...], env={**os.environ, **env})

`unavailable()` says why it cannot run here (not installed, not root), for a skip.
"""
from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Iterator

DAEMONS = ("munged", "slurmctld", "slurmd", "srun", "sbatch", "squeue", "scontrol", "sinfo", "runuser")
NODES = ("n1", "n2")
READY_TIMEOUT = 60.0


def unavailable() -> str:
    """Why a local SLURM cannot start here ('' when it can)."""
    missing = [name for name in DAEMONS if shutil.which(name) is None]
    if missing:
        return ("not installed: " + ", ".join(missing) +
                " (apt-get install -y slurmd slurmctld munge; CI's `make test` has none)")
    if os.geteuid() != 0:
        return "slurmd must run as root"
    if not Path("/etc/munge/munge.key").is_file():
        return "no munge key: mungekey --create"
    return ""


def _free_ports(count: int) -> list[int]:
    with contextlib.ExitStack() as stack:
        socks = [stack.enter_context(socket.socket()) for _ in range(count)]
        for sock in socks:
            sock.bind(("127.0.0.1", 0))
        return [sock.getsockname()[1] for sock in socks]


def _conf(root: Path, socket_path: Path, ports: list[int]) -> str:
    lines = [
        "ClusterName=guardruntest",
        "SlurmctldHost=localhost(127.0.0.1)",
        f"SlurmctldPort={ports[0]}",
        "AuthType=auth/munge", "CredType=cred/munge", f"AuthInfo=socket={socket_path}",
        "ProctrackType=proctrack/linuxproc", "TaskPlugin=task/none",
        "SlurmUser=root", "SlurmdUser=root", "MpiDefault=none", "ReturnToService=2",
        "SchedulerType=sched/builtin", "SelectType=select/cons_tres",
        f"StateSaveLocation={root}/state",
        f"SlurmctldPidFile={root}/slurmctld.pid", f"SlurmctldLogFile={root}/slurmctld.log",
        f"SlurmdSpoolDir={root}/spool-%n", f"SlurmdPidFile={root}/slurmd-%n.pid",
        f"SlurmdLogFile={root}/slurmd-%n.log",
        "JobCompType=jobcomp/none", "AccountingStorageType=accounting_storage/none",
    ]
    for name, port in zip(NODES, ports[1:]):
        lines.append(f"NodeName={name} NodeHostname=localhost NodeAddr=127.0.0.1 Port={port} "
                     "CPUs=1 RealMemory=4000 State=UNKNOWN")
    lines.append(f"PartitionName=all Nodes={','.join(NODES)} Default=YES MaxTime=INFINITE State=UP")
    return "\n".join(lines) + "\n"


@contextlib.contextmanager
def cluster(tmp: Path) -> Iterator[dict[str, str]]:
    """Start the cluster in `tmp`; yield the clients' environment; stop every daemon it started."""
    root = Path(tmp) / "slurm"
    (root / "state").mkdir(parents=True)
    # munged runs as munge, which cannot enter pytest's private tmp folders: a folder of its own
    outer = Path(tempfile.mkdtemp(prefix="guardrun-munge-"))
    outer.chmod(0o755)
    munge_dir = outer / "munge"
    munge_dir.mkdir()
    shutil.chown(munge_dir, "munge", "munge")
    socket_path = munge_dir / "munge.socket"
    conf = root / "slurm.conf"
    conf.write_text(_conf(root, socket_path, _free_ports(1 + len(NODES))))
    pid_files = [munge_dir / "munged.pid", root / "slurmctld.pid", *(root / f"slurmd-{n}.pid" for n in NODES)]
    env = {"SLURM_CONF": str(conf)}
    try:
        _run(["runuser", "-u", "munge", "--", "munged", f"--socket={socket_path}",
              f"--pid-file={pid_files[0]}", f"--log-file={munge_dir}/munged.log",
              f"--seed-file={munge_dir}/munged.seed"])
        _run(["slurmctld", "-f", str(conf)])
        for name in NODES:
            _run(["slurmd", "-f", str(conf), "-N", name])
        _wait_ready(env, root)
        yield env
    finally:
        _stop(pid_files)
        shutil.rmtree(outer, ignore_errors=True)


def _run(argv: list[str]) -> None:
    done = subprocess.run(argv, capture_output=True, text=True, timeout=30, stdin=subprocess.DEVNULL)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} exited {done.returncode}: {done.stderr.strip()}")


def _wait_ready(env: dict[str, str], root: Path) -> None:
    """Until both nodes are idle (sinfo), READY_TIMEOUT at most."""
    deadline = time.monotonic() + READY_TIMEOUT
    states = ""
    while time.monotonic() < deadline:
        done = subprocess.run(["sinfo", "-h", "-N", "-o", "%N %t"], capture_output=True, text=True,
                              timeout=30, env={**os.environ, **env})
        states = done.stdout.strip()
        if done.returncode == 0 and sorted(states.splitlines()) == [f"{n} idle" for n in NODES]:
            return
        time.sleep(0.5)  # polling sinfo: the daemons tell nothing else when they are ready
    logs = {p.name: p.read_text(errors="replace")[-600:] for p in root.glob("*.log")}
    raise RuntimeError(f"the nodes did not come up within {READY_TIMEOUT:g}s (sinfo: {states!r}); logs: {logs}")


def wait_job(env: dict[str, str], job: str, timeout: float) -> None:
    """Until SLURM job `job` has left the queue (squeue), `timeout` seconds at most."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        queued = subprocess.run(["squeue", "-h", "-j", job], capture_output=True, text=True, timeout=30,
                                env={**os.environ, **env})
        if queued.returncode == 0 and not queued.stdout.strip():
            return
        time.sleep(1)  # polling squeue: SLURM tells a client nothing else when a job ends
    raise RuntimeError(f"SLURM job {job} still queued or running after {timeout:g}s")


def _stop(pid_files: list[Path]) -> None:
    """SIGTERM each daemon by its pid file (newest first), then SIGKILL what is left after 15 s.
    Their children are waited for too (slurmctld's slurmscriptd outlives it by a second or two)."""
    pids = []
    for path in reversed(pid_files):
        try:
            pid = int(path.read_text().split()[0])
        except (OSError, ValueError, IndexError):
            continue
        children = _children(pid)
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
            pids += [pid, *children]
    deadline = time.monotonic() + 15
    while pids and time.monotonic() < deadline:
        pids = [pid for pid in pids if _alive(pid)]
        time.sleep(0.1)
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    left = [pid for pid in pids if _alive(pid)]
    if left:
        raise RuntimeError(f"SLURM daemons still running after SIGKILL: {left}")


def _children(pid: int) -> list[int]:
    try:
        return [int(each) for each in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except (OSError, ValueError):
        return []


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # a zombie that our test is not the parent of counts as gone
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(") ")[1][0] != "Z"
    except (OSError, IndexError):
        return False


def left_running(root: Path | str) -> list[str]:
    """Live processes that name `root` (a test's folder, a marker) in their command line or environment."""
    left = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit() or int(proc.name) == os.getpid():
            continue
        try:
            stat = (proc / "stat").read_text()
            cmdline = (proc / "cmdline").read_bytes()
            seen = cmdline + (proc / "environ").read_bytes()
        except OSError:
            continue
        if str(root).encode() in seen and stat.split(") ")[1][0] != "Z":
            left.append(proc.name + ": " + cmdline.replace(b"\0", b" ").decode(errors="replace"))
    return left
