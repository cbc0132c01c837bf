"""Which part of a multi-node job this guardrun runs: `nodes:` + --node-rank + the environment.

The same recipe file runs on every node; what differs is the node rank, given by
`guardrun run --node-rank N` (which sets GUARDRUN_NODE_RANK), else GUARDRUN_NODE_RANK, else
SLURM_NODEID (srun sets it per node). Under SLURM (SLURM_JOB_NODELIST set) what the recipe
leaves out comes from the allocation: the count is SLURM_NNODES and the rendezvous is the
first host of SLURM_JOB_NODELIST at port 29400.

`resolve` is pure (the environment and the nodelist expander are passed in); `hostnames`
asks `scontrol show hostnames` when it is installed and falls back to `parse_nodelist`.
"""
from __future__ import annotations

import re
import shutil
import subprocess
from typing import Callable, Mapping

from .spec import Nodes, NodeView

RANK_ENV = "GUARDRUN_NODE_RANK"
#: The rendezvous port under SLURM when the recipe names none (torchrun's c10d default).
SLURM_PORT = 29400
_RANGE_RE = re.compile(r"^(\d+)(?:-(\d+))?$")


class NodeError(ValueError):
    """The node view cannot be resolved; `key` is the recipe key to point at."""

    def __init__(self, key: str, message: str, *, no_rank: bool = False):
        super().__init__(message)
        self.key = key
        self.no_rank = no_rank  # only the node rank is missing (`guardrun plan` shows node 0)


def resolve(nodes: Nodes, env: Mapping[str, str],
            expand: Callable[[str], list[str]] | None = None) -> NodeView:
    """This guardrun's NodeView. Raises NodeError saying what is missing or wrong."""
    nodelist = env.get("SLURM_JOB_NODELIST") or None
    count = nodes.count if nodes.count is not None else (
        _env_int(env, "SLURM_NNODES", 1) if nodelist else 1)
    if count == 1:
        return NodeView(shared_dir=nodes.shared_dir, timeout=nodes.timeout)
    rank = _rank(env, count)
    if nodes.rendezvous is not None:
        host, port = nodes.rendezvous
    elif nodelist:
        host, port = (expand or parse_nodelist)(nodelist)[0], SLURM_PORT
    else:
        raise NodeError("nodes.rendezvous", f"{count} nodes need a rendezvous: give nodes.rendezvous, "
                        "host:port of node rank 0 (like node01:29400)")
    if nodes.shared_dir is None:
        raise NodeError("nodes.shared_dir", f"{count} nodes need a folder every node sees: give "
                        "nodes.shared_dir, or checkpoints.dir (then <checkpoints.dir>/.guardrun is used)")
    return NodeView(count=count, rank=rank, rendezvous_host=host, rendezvous_port=port,
                    shared_dir=nodes.shared_dir, timeout=nodes.timeout)


def _rank(env: Mapping[str, str], count: int) -> int:
    for name in (RANK_ENV, "SLURM_NODEID"):
        if env.get(name, "") != "":
            rank = _env_int(env, name, 0)
            if rank >= count:
                raise NodeError("nodes.count", f"node rank {rank} ({name}) is not below the node count "
                                f"{count} (ranks count from 0)")
            return rank
    raise NodeError("nodes.count", f"{count} nodes: say which one this is with --node-rank N "
                    f"(0 to {count - 1}; or {RANK_ENV}=N; srun sets SLURM_NODEID)", no_rank=True)


def _env_int(env: Mapping[str, str], name: str, least: int) -> int:
    text = env[name].strip()
    if not text.isdigit() or int(text) < least:
        raise NodeError("nodes.count", f"{name}={env[name]!r}: expected an integer >= {least}")
    return int(text)


def parse_nodelist(nodelist: str) -> list[str]:
    """SLURM's compact host list -> host names: `node[01-04,07]`, `a1,b[2-3]`, `r[1-2]-n[1-2]`.

    Zero padding is kept (`[08-10]` -> 08, 09, 10). Raises NodeError on a malformed list."""
    hosts: list[str] = []
    for item in _split_top(nodelist):
        hosts += _expand(item, nodelist)
    if not hosts:
        raise NodeError("nodes.rendezvous", f"SLURM_JOB_NODELIST={nodelist!r} names no host")
    return hosts


def _split_top(nodelist: str) -> list[str]:
    """Split at the commas outside brackets."""
    items, depth, start = [], 0, 0
    for index, char in enumerate(nodelist):
        depth += {"[": 1, "]": -1}.get(char, 0)
        if depth not in (0, 1):
            raise NodeError("nodes.rendezvous", f"SLURM_JOB_NODELIST={nodelist!r}: unbalanced brackets")
        if char == "," and depth == 0:
            items.append(nodelist[start:index])
            start = index + 1
    if depth:
        raise NodeError("nodes.rendezvous", f"SLURM_JOB_NODELIST={nodelist!r}: unbalanced brackets")
    items.append(nodelist[start:])
    return [item.strip() for item in items if item.strip()]


def _expand(item: str, nodelist: str) -> list[str]:
    if "[" not in item:
        return [item]
    head, rest = item.split("[", 1)
    inside, tail = rest.split("]", 1)
    names = []
    for part in inside.split(","):
        match = _RANGE_RE.match(part.strip())
        if not match or (match.group(2) and int(match.group(2)) < int(match.group(1))):
            raise NodeError("nodes.rendezvous", f"SLURM_JOB_NODELIST={nodelist!r}: {part!r} is not a "
                            "number or a range like 01-04")
        low, high = match.group(1), match.group(2) or match.group(1)
        names += [str(number).zfill(len(low)) for number in range(int(low), int(high) + 1)]
    return [head + name + more for name in names for more in _expand(tail, nodelist)]


def hostnames(nodelist: str) -> list[str]:
    """`scontrol show hostnames NODELIST` where scontrol runs, else `parse_nodelist`."""
    scontrol = shutil.which("scontrol")
    if scontrol:
        try:
            done = subprocess.run([scontrol, "show", "hostnames", nodelist], capture_output=True,
                                  text=True, timeout=10, check=False)
        except (OSError, subprocess.TimeoutExpired):
            done = None
        if done is not None and done.returncode == 0 and done.stdout.split():
            return done.stdout.split()
    return parse_nodelist(nodelist)


def describe(view: NodeView) -> str:
    """One line for `guardrun plan` and the job's first lines."""
    if not view.multi:
        return "nodes: 1 (this machine only)"
    return (f"nodes: {view.count}, this is node rank {view.rank}; rendezvous "
            f"{view.rendezvous_host}:{view.rendezvous_port}; shared_dir {view.shared_dir}; "
            f"barrier timeout {view.timeout:g}s")
