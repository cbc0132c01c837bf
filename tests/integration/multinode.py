"""Two guardruns on this machine as the two nodes of one job (issue 16).

Each node is a `guardrun run RECIPE --node-rank N` process with its own local state dir
(GUARDRUN_STATE_DIR), as on two machines; both share the recipe, the checkpoint folder
(`./out`, the "shared filesystem") and `nodes.shared_dir`, and meet at a rendezvous on
127.0.0.1. The job is the real HF Trainer test script at 2 CPU ranks per node (gloo).
A test judges the run from the trainer's own record (its start line, trainer_state.json)
and from each node's journal, and checks that no process of either node is left.

Each node's processes carry NODE_MARK=<test tag>-<rank> in their environment, so a test
can find (and, to play a machine dying, SIGKILL) one node's whole tree, and only it.
"""
from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import textwrap
import time
from dataclasses import dataclass, field
from pathlib import Path

from conftest import REPO, TAG, _job_cgroups, tagged_pids, wait_until

from guardrun.supervisor.run.loop import free_port
from guardrun.supervisor.watch import cgroupv1
from guardrun.supervisor.watch.proctree import environ_pids

GUARDRUN = str(Path(sys.executable).parent / "guardrun")
TRAINER = REPO / "tests" / "trainers" / "hf_lora_train.py"
DS_ZERO3 = REPO / "tests" / "trainers" / "ds_zero3.json"
NODE_MARK = "GUARDRUN_TEST_NODE"
#: The job's name: the recipe's file name.
JOB = "job"


def two_node_recipe(tmp_path: Path, args: str, extra: str = "", timeout: str = "30s",
                    deepspeed: bool = False) -> Path:
    """A recipe for 2 nodes of the HF Trainer, `args` added to its args mapping, `extra` recipe
    lines (a ladder, limits) appended: torchrun with 2 CPU ranks per node, or (`deepspeed`)
    DeepSpeed's runner with ZeRO-3 and 1 rank per node."""
    shared = tmp_path / "shared"
    launch = (f"launcher: deepspeed\ndeepspeed: {{config: {DS_ZERO3}}}\ngpus: 1\n" if deepspeed
              else "launcher: torchrun\ngpus: 2\n")
    cpu = "" if deepspeed else "use_cpu: true, "   # DeepSpeed brings its own CPU backend
    body = f"""
        script: {TRAINER}
        args: {{output_dir: ./out, logging_steps: 1, report_to: none, save_steps: 2,
                num_samples: 256, {cpu}{args}}}
        batch: {{per_device: {2 if deepspeed else 4}, grad_accum: 1}}
        checkpoints: {{dir: ./out}}
        monitor: {{interval: 0.25}}
        stop_grace: 10s
        restarts: {{max: 2, backoff: [0.1s, 0.2s]}}
        nodes: {{count: 2, rendezvous: "127.0.0.1:{free_port()}", shared_dir: {shared}, timeout: {timeout}}}
        """
    path = tmp_path / f"{JOB}.yaml"
    path.write_text(launch + textwrap.dedent(body) + textwrap.dedent(extra))
    return path


@dataclass
class Node:
    """One node's guardrun: its process, its state dir, its console."""

    rank: int
    home: Path
    popen: subprocess.Popen | None = None
    took: float | None = None
    _started: float = field(default=0.0, repr=False)

    @property
    def state_dir(self) -> Path:
        return self.home / "state"

    @property
    def console(self) -> Path:
        return self.home / "console.log"

    @property
    def mark(self) -> str:
        return f"{os.environ[TAG]}-{self.rank}"

    def start(self, recipe: Path, overrides: tuple[str, ...] = ()) -> None:
        self.home.mkdir(parents=True, exist_ok=True)
        env = {**os.environ, "GUARDRUN_STATE_DIR": str(self.state_dir), NODE_MARK: self.mark}
        with open(self.console, "wb") as sink:   # a file, not a pipe: nothing can block on it
            self.popen = subprocess.Popen([GUARDRUN, "run", str(recipe), "--node-rank", str(self.rank),
                                           *overrides], stdout=sink, stderr=subprocess.STDOUT, env=env,
                                          cwd=recipe.parent)
        self._started = time.monotonic()

    def wait(self, timeout: float) -> int:
        try:
            code = self.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"node {self.rank}'s guardrun still runs after {timeout}s:\n"
                                 + self.output()[-3000:]) from None
        self.took = self.took if self.took is not None else time.monotonic() - self._started
        return code

    def output(self) -> str:
        return self.console.read_text(errors="replace") if self.console.exists() else ""

    def events(self, event: str) -> list[dict]:
        """The node's journal entries `guardrun.<event>`, in order."""
        path = self.state_dir / JOB / "events.jsonl"
        lines = path.read_text().splitlines() if path.exists() else []
        return [e for e in map(json.loads, lines) if e["event"] == f"guardrun.{event}"]

    def ended_kinds(self) -> list[str]:
        return [e["kind"] for e in self.events("attempt.ended")]

    def trainer_line(self, attempt: int) -> dict[str, str]:
        """The trainer's own account of attempt N (printed by global rank 0: node 0's output)."""
        text = (self.state_dir / JOB / "attempts" / str(attempt) / "output.log").read_text(errors="replace")
        match = re.search(r"\[hf_lora_train\] (world_size=.*)", text)
        assert match, text[-3000:]
        return dict(pair.split("=", 1) for pair in match.group(1).split())

    def status(self) -> str:
        """`guardrun status job` on this node, as its user would run it there."""
        env = {**os.environ, "GUARDRUN_STATE_DIR": str(self.state_dir)}
        done = subprocess.run([GUARDRUN, "status", JOB], capture_output=True, text=True, env=env, timeout=60)
        return done.stdout + done.stderr

    def pids(self) -> set[int]:
        """This node's live processes: its guardrun, torchrun agent, ranks."""
        return environ_pids({f"{NODE_MARK}={self.mark}".encode()})

    def die(self) -> None:
        """The machine dies: SIGKILL every process of this node (all started by this test)."""
        for _ in range(5):  # a dying tree may fork on its way; take what appears too
            pids = self.pids()
            if not pids:
                return
            for pid in pids:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            time.sleep(0.1)

    def stop(self) -> None:
        """Kill what is left of this node (a failed test), then wait its guardrun."""
        if self.popen is not None and self.popen.poll() is None:
            self.die()
            self.popen.wait(30)

    def remove_cgroups(self) -> None:
        for path in _job_cgroups(self.state_dir):  # as the state_dir fixture does for one node
            cgroupv1.JobCgroup(path).remove()


def nodes(tmp_path: Path, count: int = 2) -> list[Node]:
    return [Node(rank, tmp_path / f"node{rank}") for rank in range(count)]


def start_all(all_nodes: list[Node], recipe: Path, overrides: dict[int, tuple[str, ...]] | None = None) -> None:
    for node in all_nodes:
        node.start(recipe, (overrides or {}).get(node.rank, ()))


def assert_nothing_left(all_nodes: list[Node], timeout: float = 15.0) -> None:
    """No process of any node runs (the test's tag: guardruns, agents, ranks, orphans)."""
    tag = os.environ[TAG]
    try:
        wait_until(lambda: not tagged_pids(tag), timeout=timeout, what="every node's processes to exit")
    except AssertionError:
        left = {node.rank: sorted(node.pids()) for node in all_nodes}
        raise AssertionError(f"processes left per node: {left}") from None


def trainer_state(out: Path, step: int) -> dict:
    return json.loads((out / f"checkpoint-{step}" / "trainer_state.json").read_text())


def logged_steps(state: dict) -> list[int]:
    return sorted({e["step"] for e in state["log_history"] if "loss" in e})
