"""`guardrun doctor`: is this machine ready for guardrun? One line per fact: OK, WARN or FAIL.

Each probe is a small function of what it reads, with every root injectable (a fake
/proc, /sys/fs/cgroup, /run/user and linger folder in a temp dir, a fake GPU source,
a fake `which`), so the tests feed it machines this one is not. A FAIL is something
that breaks guardrun's watch (no /proc/meminfo, a driver NVML cannot talk to); what
only disables a feature (stack dumps, detached runs, cgroup containment) is a WARN
that says what to do. `guardrun doctor` exits 1 on a FAIL, else 0.
"""
from __future__ import annotations

import os
import pwd
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Mapping

from guardrun.launcher.units import format_bytes

from ..diagnose.stacks import find_py_spy
from ..watch import cgroupv1
from ..watch import cgroupv2 as cgroup
from ..watch.gpu import GpuError, GpuSource, QueryChoice, open_gpu_source
from ..watch.gpu import driver_version as nvml_driver_version

OK, WARN, FAIL = "OK", "WARN", "FAIL"


@dataclass(frozen=True)
class Check:
    status: str   # OK | WARN | FAIL
    name: str
    detail: str
    fix: str = ""  # what to do, for WARN and FAIL

    def line(self) -> str:
        text = f"{self.status:<4}  {self.name}: {self.detail}"
        return text + (f"\n      -> {self.fix}" if self.fix else "")


@dataclass(frozen=True)
class Machine:
    """Where the probes look. The defaults are this machine."""

    proc: Path = Path("/proc")
    cgroup_root: Path = cgroup.CGROUP_ROOT
    run_user: Path = Path("/run/user")
    linger: Path = Path("/var/lib/systemd/linger")
    uid: int = field(default_factory=os.getuid)
    user: str = field(default_factory=lambda: _user_name(os.getuid()))
    env: Mapping[str, str] = field(default_factory=lambda: dict(os.environ))
    which: Callable[[str], str | None] = shutil.which


def run(machine: Machine | None = None, gpus: GpuSource | None | str = "detect",
        driver_version: Callable[[], str | None] | None = None,
        py_spy: Callable[[], str | None] = find_py_spy) -> list[Check]:
    """Every check, in the order `guardrun doctor` prints them."""
    machine = machine or Machine()
    return [*gpu_checks(machine, gpus, driver_version), *memory_checks(machine.proc),
            cgroup_check(machine), *systemd_checks(machine), tool_check("tmux", machine.which("tmux"),
            "apt install tmux: `guardrun tmux` keeps the live view when SSH drops"),
            tool_check("py-spy", py_spy(), "pip install py-spy: guardrun dumps a hung job's stacks with it"),
            ptrace_check(machine.proc)]


def exit_code(checks: Iterable[Check]) -> int:
    return 1 if any(c.status == FAIL for c in checks) else 0


# -- GPUs ------------------------------------------------------------------------------

def gpu_checks(machine: Machine, gpus: GpuSource | None | str = "detect",
               driver_version: Callable[[], str | None] | None = None) -> list[Check]:
    """Each GPU (model, free memory, who uses it) and the NVML driver version."""
    why = ""
    if gpus == "detect":
        gpus, why = open_gpu_source(str(machine.proc))
    driver_loaded = (machine.proc / "driver" / "nvidia" / "version").is_file()
    if gpus is None:
        if driver_loaded:
            return [Check(FAIL, "gpu", f"the NVIDIA driver is loaded but NVML failed ({why})",
                          "a driver/library version mismatch (after a driver upgrade) needs a reboot; "
                          "check that `nvidia-smi` works")]
        return [Check(WARN, "gpu", f"no NVIDIA driver ({why or 'NVML unavailable'})",
                      "jobs run on CPU ranks; GPU memory is neither checked nor watched")]
    try:
        readings = gpus.devices()
        holders = {r.index: gpus.processes(r.index) for r in readings}
    except GpuError as err:
        return [Check(FAIL, "gpu", f"NVML failed: {err}", "check `nvidia-smi`; a GPU may have fallen off the bus")]
    query = gpus.process_query
    unknown = query is not None and query.query is None  # no process list: "idle" would be a guess
    checks = []
    for reading in readings:
        users = [f"pid {p.pid} ({_owner(machine.proc, p.pid)}"
                 + (f", {format_bytes(p.used)})" if p.used else ")") for p in holders[reading.index]]
        detail = (f"{reading.name}, {format_bytes(reading.free)} free of {format_bytes(reading.total)}"
                  + (f"; used by {', '.join(users)}" if users else ", processes unknown" if unknown else ", idle"))
        busy = bool(users)
        checks.append(Check(WARN if busy else OK, f"gpu {reading.index}", detail,
                            "busy: `gpus: N` in a recipe picks free GPUs" if busy else ""))
    if query is not None:
        checks.append(process_query_check(query))
    version = (driver_version or nvml_driver_version)()
    checks.append(Check(OK, "driver", f"NVIDIA driver {version} (NVML)") if version else
                  Check(WARN, "driver", "NVML did not report a driver version", "check `nvidia-smi`"))
    return checks


def process_query_check(choice: QueryChoice) -> Check:
    """Which of NVML's process queries this driver answers (`_v3` needs R510 or newer)."""
    if choice.query is not None:
        return Check(OK, "gpu processes", choice.note)
    return Check(WARN, "gpu processes", choice.note,
                 "VRAM is watched per GPU, but guardrun cannot tell the job's GPU processes from others' "
                 "(picking free GPUs, waiting for their release): update the NVIDIA driver")


def _owner(proc: Path, pid: int) -> str:
    try:
        for line in (proc / str(pid) / "status").read_text().splitlines():
            if line.startswith("Uid:"):
                return _user_name(int(line.split()[1]))
    except (OSError, ValueError, IndexError):
        pass
    return "another container or user"


def _user_name(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return str(uid)


# -- host memory -------------------------------------------------------------------------

def memory_checks(proc: Path) -> list[Check]:
    """MemTotal / MemAvailable, and swap."""
    try:
        fields = _meminfo((proc / "meminfo").read_text())
        total, available = fields["MemTotal"], fields.get("MemAvailable", fields["MemFree"])
    except (OSError, KeyError, ValueError) as err:
        return [Check(FAIL, "memory", f"cannot read {proc / 'meminfo'} ({err})",
                      "guardrun watches memory through procfs: mount /proc")]
    low = available < total * 0.10
    memory = Check(WARN if low else OK, "memory",
                   f"{format_bytes(available)} available of {format_bytes(total)}",
                   "others are using most of the memory: expect host_oom early, or wait" if low else "")
    swap_total, swap_free = fields.get("SwapTotal", 0), fields.get("SwapFree", 0)
    used = swap_total - swap_free
    if swap_total == 0:
        swap = Check(OK, "swap", "none: memory pressure ends in the OOM killer, which guardrun's limits pre-empt")
    elif used > swap_total / 2:
        swap = Check(WARN, "swap", f"{format_bytes(used)} of {format_bytes(swap_total)} in use",
                     "the machine is swapping: training slows to a crawl before any OOM; find who uses the memory")
    else:
        swap = Check(OK, "swap", f"{format_bytes(used)} of {format_bytes(swap_total)} in use")
    return [memory, swap]


def _meminfo(text: str) -> dict[str, int]:
    out = {}
    for line in text.splitlines():
        name, _, rest = line.partition(":")
        parts = rest.split()
        if parts:
            out[name] = int(parts[0]) << 10 if parts[-1] == "kB" else int(parts[0])
    return out


# -- cgroups, systemd, tools, ptrace ------------------------------------------------------

def cgroup_check(machine: Machine) -> Check:
    root = machine.cgroup_root
    try:
        self_cgroup = (machine.proc / "self" / "cgroup").read_text()
    except OSError:
        self_cgroup = ""
    if not cgroupv1.why_not(root / "memory", self_cgroup):
        return Check(OK, "cgroup", "cgroup v1 memory controller writable: each job runs in a memory "
                                   "cgroup of its own (containment: auto), sampled in one read")
    v2_root = cgroup.find_root((root, root / "unified"))
    if v2_root is not None and not cgroup.why_not(v2_root, self_cgroup):
        return Check(OK, "cgroup", "cgroup v2 with the memory controller delegated to guardrun's own "
                                   "cgroup: each job runs in a memory cgroup of its own (containment: auto)")
    found = cgroup.detect(root, self_cgroup, machine.env, machine.uid, machine.which)
    if found.cgroup_ok:
        return Check(OK, "cgroup", "cgroup v2, memory controller delegated to your user manager")
    version = "v2" if (root / "cgroup.controllers").is_file() else \
        "v1 (hybrid)" if (root / "unified").is_dir() else "v1"
    fix = ("guardrun follows the job through /proc (works; a process that re-parents out of the "
           "tree is not followed); for containment use a host with cgroup v2 and systemd delegation")
    detail = f"cgroup v2: {found.reason}" if version == "v2" else f"cgroup {version}: no memory containment"
    return Check(WARN, "cgroup", detail, fix)


def systemd_checks(machine: Machine) -> list[Check]:
    runtime = Path(machine.env.get("XDG_RUNTIME_DIR") or machine.run_user / str(machine.uid))
    if (runtime / "systemd" / "private").exists():
        manager = Check(OK, "systemd", f"user manager running ({runtime / 'systemd'})")
    else:
        manager = Check(WARN, "systemd", "no systemd user manager for you",
                        "`guardrun` units need one (log in through a systemd-logind session); "
                        "use `guardrun tmux` instead")
    if (machine.linger / machine.user).exists():
        linger = Check(OK, "linger", f"enabled for {machine.user}: user units survive logout")
    else:
        linger = Check(WARN, "linger", f"not enabled for {machine.user}: user units stop when you log out",
                       f"loginctl enable-linger {machine.user}")
    return [manager, linger]


def tool_check(name: str, path: str | None, fix: str) -> Check:
    return Check(OK, name, path) if path else Check(WARN, name, "not found", fix)


def ptrace_check(proc: Path) -> Check:
    """Yama's ptrace_scope decides whether py-spy may read the job's ranks (its siblings)."""
    path = proc / "sys" / "kernel" / "yama" / "ptrace_scope"
    try:
        scope = int(path.read_text().strip())
    except (OSError, ValueError):
        return Check(OK, "ptrace", "no Yama restriction: stack dumps of your own processes work")
    if scope == 0:
        return Check(OK, "ptrace", "kernel.yama.ptrace_scope = 0: stack dumps work")
    fixes = {1: "py-spy may read only its own descendants, and the ranks are its siblings: "
                "`sudo sysctl kernel.yama.ptrace_scope=0`, or give py-spy CAP_SYS_PTRACE "
                "(`sudo setcap cap_sys_ptrace+ep $(which py-spy)`)",
             2: "only root may ptrace: run with sudo, or ask the admin for CAP_SYS_PTRACE on py-spy",
             3: "ptrace is disabled until reboot: hung jobs are stopped without stack dumps"}
    return Check(WARN, "ptrace", f"kernel.yama.ptrace_scope = {scope}: a hung job's stacks cannot be dumped",
                 fixes.get(scope, "stack dumps need ptrace rights over the job"))
