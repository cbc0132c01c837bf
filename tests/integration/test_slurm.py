"""A real two-node SLURM on this machine (slurmlocal.py): what each node's guardrun resolves.

`srun -N2 -n2 --ntasks-per-node=1` runs one task on n1 and one on n2; guardrun's node view on
each comes from SLURM alone (the recipe has no `nodes:`): SLURM_NODEID -> node rank,
SLURM_NNODES -> count, the first host of SLURM_JOB_NODELIST (n[1-2], through scontrol) at
29400 -> rendezvous. Skipped with the reason where the daemons are not installed.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import slurmlocal

pytestmark = pytest.mark.skipif(bool(slurmlocal.unavailable()), reason=slurmlocal.unavailable() or "-")

VIEW = ("import json, sys; from guardrun.launcher.recipe import load_recipe; "
        "n = load_recipe(sys.argv[1]).node; "
        "print(json.dumps({'rank': n.rank, 'count': n.count, 'host': n.rendezvous_host, "
        "'port': n.rendezvous_port, 'shared': str(n.shared_dir)}))")


def _srun(env: dict[str, str], *argv: str) -> list[str]:
    done = subprocess.run(["srun", "-l", "-N2", "-n2", "--ntasks-per-node=1", "--chdir", os.getcwd(), *argv],
                          capture_output=True, text=True, timeout=120, env={**os.environ, **env})
    assert done.returncode == 0, done.stderr
    return done.stdout.splitlines()


def test_srun_two_nodes_each_guardrun_resolves_its_part(tmp_path):
    (tmp_path / "train.py").write_text("")
    recipe = tmp_path / "job.yaml"
    recipe.write_text(textwrap.dedent(f"""\
        launcher: torchrun
        python: {sys.executable}
        script: train.py
        gpus: 1
        checkpoints: {{dir: {tmp_path}/out}}
        """))
    with slurmlocal.cluster(tmp_path) as env:
        views = _srun(env, sys.executable, "-c", VIEW, str(recipe))
        plans = _srun(env, sys.executable, "-m", "guardrun.supervisor", "plan", str(recipe))
    by_task = {int(line.split(":", 1)[0]): json.loads(line.split(":", 1)[1]) for line in views}
    shared = f"{tmp_path}/out/.guardrun"
    assert by_task == {task: {"rank": task, "count": 2, "host": "n1", "port": 29400, "shared": shared}
                       for task in (0, 1)}
    for task in (0, 1):
        said = [line.split(": ", 1)[1] for line in plans if line.startswith(f"{task}: ")]
        assert (f"nodes: 2, this is node rank {task}; rendezvous n1:29400; shared_dir {shared}; "
                "barrier timeout 600s") in said
        command = next(line for line in said if line.startswith("   command: "))
        assert f"--nnodes 2 --node-rank {task} --master-addr n1 --master-port 29400" in command
    assert slurmlocal.left_running(tmp_path) == []


@pytest.mark.slow
def test_sbatch_of_the_example_trains_across_two_nodes(tmp_path):
    """recipes/slurm_two_nodes.sbatch as a user submits it: world 4 (2 nodes x 2 ranks), step 30."""
    bundle = Path(__file__).resolve().parents[2] / "recipes"
    (tmp_path / "recipes").mkdir()
    for name in ("slurm_two_nodes.sbatch", "demo_train.py"):
        shutil.copy(bundle / name, tmp_path / "recipes" / name)
    text = (bundle / "slurm_two_nodes.yaml").read_text()
    (tmp_path / "recipes" / "slurm_two_nodes.yaml").write_text(
        text.replace("workdir: .\n", f"workdir: .\npython: {sys.executable}\n"))
    # both "nodes" share this machine's home: each guardrun gets a state dir of its own
    wrapper = tmp_path / "guardrun"
    wrapper.write_text(f"#!/bin/bash\nexport GUARDRUN_STATE_DIR={tmp_path}/state-$SLURM_NODEID\n"
                       f"exec {sys.executable} -m guardrun.supervisor \"$@\"\n")
    wrapper.chmod(0o755)
    with slurmlocal.cluster(tmp_path) as env:
        env = {**os.environ, **env, "GUARDRUN": str(wrapper)}
        submitted = subprocess.run(["sbatch", "--parsable", "recipes/slurm_two_nodes.sbatch",
                                    "nodes.rendezvous=127.0.0.1:29400"],  # n1 does not resolve here
                                   cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60)
        assert submitted.returncode == 0, submitted.stderr
        slurmlocal.wait_job(env, submitted.stdout.strip(), timeout=300)
    record = json.loads((tmp_path / "build/slurm-two-nodes/checkpoint-30/trainer_state.json").read_text())
    assert record["global_step"] == 30
    output = next(tmp_path.glob("guardrun-two-nodes-*.out")).read_text()
    assert "world_size=4 per_device=4 grad_accum=1 global_batch=16" in output
    for rank in (0, 1):
        state = json.loads((tmp_path / f"state-{rank}/slurm-two-nodes/state.json").read_text())
        assert state["state"] == "finished", output[-3000:]
    assert slurmlocal.left_running(tmp_path) == []
