"""Launch lines for one node of a multi-node job (launcher/multinode.py); one node stays as it was."""
from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from guardrun.launcher.command import build
from guardrun.launcher.failures import Failure, Kind
from guardrun.launcher.ladder import decide
from guardrun.launcher.recipe import RecipeError, load_recipe

NODES = "nodes: {count: 2, rendezvous: 10.0.0.1:29400, timeout: 2m}\n"
BASE = """
launcher: LAUNCHER
python: /venv/bin/python
script: train.py
args: {output_dir: out}
gpus: 2
checkpoints: {dir: out}
"""


def _recipe(tmp_path: Path, launcher: str, extra: str = NODES, rank: str = "1", gpus: str = "2"):
    (tmp_path / "train.py").write_text("")
    body = textwrap.dedent(BASE).replace("LAUNCHER", launcher).replace("gpus: 2", f"gpus: {gpus}")
    if launcher == "command":
        body = body.replace("script: train.py\n", "command: [llamafactory-cli, train, cfg.yaml]\n")
    path = tmp_path / "job.yaml"
    path.write_text(body + extra)
    return load_recipe(path, env={"GUARDRUN_NODE_RANK": rank})


def test_torchrun_static_rendezvous_at_node_zero(tmp_path):
    recipe = _recipe(tmp_path, "torchrun")
    argv = build(recipe, decide(recipe, []).plan).argv
    assert argv[:17] == (
        "/venv/bin/python", "-m", "torch.distributed.run", "--nnodes", "2", "--node-rank", "1",
        "--master-addr", "10.0.0.1", "--master-port", "29400", "--rdzv-conf", "timeout=120",
        "--nproc-per-node", "2", "--max-restarts", "0")
    assert "--standalone" not in argv and "--rdzv-backend" not in argv  # static: node ranks as given


def test_a_gpus_rung_applies_to_every_node(tmp_path):
    recipe = _recipe(tmp_path, "torchrun")
    plan = decide(recipe, [Failure(Kind.HOST_OOM)]).plan
    argv = build(recipe, plan).argv
    assert argv[argv.index("--nproc-per-node") + 1] == "1" and argv[argv.index("--nnodes") + 1] == "2"


def test_deepspeed_per_node_without_ssh_writes_a_hostfile(tmp_path):
    recipe = _recipe(tmp_path, "deepspeed", rank="0")
    spec = build(recipe, decide(recipe, []).plan, port=31111, files_dir=tmp_path / "a1")
    hostfile = tmp_path / "a1" / "hostfile"
    assert spec.argv[:16] == (
        "/venv/bin/python", "-m", "deepspeed.launcher.runner", "--hostfile", str(hostfile), "--no_ssh",
        "--node_rank", "0", "--master_addr", "10.0.0.1", "--master_port", "29400",  # not the free port
        "--num_nodes", "2", "--num_gpus", "2")
    assert dict(spec.files)[hostfile] == "node0 slots=2\nnode1 slots=2\n"


def test_deepspeed_gpu_ids_go_to_include_on_every_node(tmp_path):
    recipe = _recipe(tmp_path, "deepspeed", gpus="[2, 3]")
    spec = build(recipe, decide(recipe, []).plan, files_dir=tmp_path)
    assert spec.argv[spec.argv.index("--include") + 1] == "node0:2,3@node1:2,3"
    assert "--num_nodes" not in spec.argv  # DeepSpeed refuses it beside --include
    assert dict(spec.files)[tmp_path / "hostfile"] == "node0 slots=4\nnode1 slots=4\n"


def test_accelerate_machine_ranks(tmp_path):
    recipe = _recipe(tmp_path, "accelerate")
    argv = build(recipe, decide(recipe, []).plan).argv
    assert argv[3:14] == ("--multi_gpu", "--num_processes", "4", "--num_machines", "2", "--machine_rank", "1",
                          "--main_process_ip", "10.0.0.1", "--main_process_port", "29400")


def test_command_tools_get_llamafactory_names(tmp_path):
    recipe = _recipe(tmp_path, "command")
    spec = build(recipe, decide(recipe, []).plan)
    assert spec.argv[:3] == ("llamafactory-cli", "train", "cfg.yaml")
    env = dict(spec.env)
    assert (env["NNODES"], env["NODE_RANK"], env["MASTER_ADDR"], env["MASTER_PORT"]) == ("2", "1", "10.0.0.1", "29400")


@pytest.mark.parametrize("launcher", ["torchrun", "deepspeed", "accelerate", "command"])
def test_one_node_is_the_command_of_today(tmp_path, launcher):
    single = _recipe(tmp_path, launcher, extra="")
    written = _recipe(tmp_path, launcher, extra="nodes: {count: 1}\n")
    plan = decide(single, []).plan
    assert build(single, plan, port=29611) == build(written, plan, port=29611)
    env = dict(build(single, plan).env)
    assert not {"NNODES", "NODE_RANK", "MASTER_ADDR", "MASTER_PORT"} & set(env)
    assert "--node-rank" not in build(single, plan).argv


def test_python_launcher_cannot_span_nodes(tmp_path):
    with pytest.raises(RecipeError, match="launcher: python runs one process: 2 nodes need one of torchrun"):
        _recipe(tmp_path, "python")


def test_accelerate_machines_are_given_once(tmp_path):
    with pytest.raises(RecipeError, match="guardrun sets num_machines, machine_rank and main_process_ip"):
        _recipe(tmp_path, "accelerate", extra=NODES + "accelerate: {num_machines: 2, machine_rank: 1, "
                "main_process_ip: 10.0.0.1}\n")
    assert _recipe(tmp_path, "accelerate", extra=NODES + "accelerate: {flags: [--mixed_precision, bf16]}\n")
