"""The launch lines of two nodes, run for real on this machine (127.0.0.1, 2 CPU ranks each).

What guardrun's command builder gives node 0 and node 1 of the same recipe is started as it
is, node 1 first (it must wait for node 0, as on a cluster), and the 4 ranks all_reduce over
gloo: world 4 and the right sum on every rank, for torchrun, DeepSpeed's runner (--no_ssh and
its hostfile) and accelerate launch.
"""
from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import textwrap
import uuid

import pytest

import slurmlocal
from guardrun.launcher.command import build
from guardrun.launcher.ladder import decide
from guardrun.launcher.recipe import load_recipe

pytestmark = pytest.mark.slow

ALL_REDUCE = """
import torch, torch.distributed as dist
dist.init_process_group("gloo")
value = torch.ones(1) * dist.get_rank()
dist.all_reduce(value)
print(f"rank {dist.get_rank()} of {dist.get_world_size()} sum {value.item():g}", flush=True)
dist.destroy_process_group()
"""


def _port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.parametrize("launcher", ["torchrun", "deepspeed", "accelerate"])
def test_two_nodes_of_one_recipe_make_one_world_of_four(tmp_path, launcher):
    (tmp_path / "train.py").write_text(ALL_REDUCE)
    recipe = tmp_path / "job.yaml"
    recipe.write_text(textwrap.dedent(f"""\
        launcher: {launcher}
        python: {sys.executable}
        script: train.py
        gpus: 2
        nodes: {{count: 2, rendezvous: 127.0.0.1:{_port()}, shared_dir: {tmp_path}/shared, timeout: 60s}}
        """))
    mark = f"guardrun-launch-test-{uuid.uuid4().hex}"
    procs = []
    try:
        for rank in (1, 0):
            loaded = load_recipe(recipe, env={"GUARDRUN_NODE_RANK": str(rank)})
            spec = build(loaded, decide(loaded, []).plan, files_dir=tmp_path / f"node{rank}")
            for path, text in spec.files:
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_text(text)
            env = {**os.environ, **dict(spec.env), "GUARDRUN_TEST_MARK": mark}
            procs.append(subprocess.Popen(spec.argv, cwd=spec.cwd, env=env, stdout=subprocess.PIPE,
                                          stderr=subprocess.STDOUT, text=True, start_new_session=True))
        outputs = [proc.communicate(timeout=240)[0] for proc in procs]
    finally:
        for proc in procs:
            if proc.poll() is None:
                os.killpg(proc.pid, 9)
                proc.wait()
    assert [proc.returncode for proc in procs] == [0, 0], outputs
    # found anywhere: two ranks' lines can interleave on the node's one stdout
    said = sorted(found for out in outputs for found in re.findall(r"rank \d+ of \d+ sum \d+", out))
    assert said == [f"rank {rank} of 4 sum 6" for rank in range(4)], outputs
    assert slurmlocal.left_running(mark) == []
