"""The launcher's command line for this node's part of a multi-node job (recipe.node.multi).

Every node runs the same recipe under its own guardrun, which starts only this node's ranks;
`gpus:` and a gpus rung count the GPUs of each node. Each relaunch is a fresh launcher on
every node (guardrun restarts, never the launcher itself), so the rendezvous must come up
anew each attempt with the same node ranks:

- torchrun: the static rendezvous (`--node-rank R --master-addr H --master-port P`), not c10d.
  Static keeps the node rank guardrun was given (c10d's dynamic rendezvous hands out node ranks
  in arrival order and ignores `--node-rank`: torch 2.13 run.py), so node rank 0, the one that
  picks the checkpoint, always holds global rank 0, the one that saves. Its TCPStore is served
  by node 0's torchrun and dies with it: a relaunch starts from an empty store, where c10d's
  store keeps the previous round's state while its host lives and torchrun's own restarts on
  it break (FIELD_NOTES). `--rdzv-conf timeout=` is `nodes.timeout`: how long each side waits
  for the other to come up, as guardrun's barrier does.
- DeepSpeed: its runner with `--no_ssh` (each node launches its own part, DeepSpeed 0.19.8);
  the runner refuses `--num_nodes` > 1 without a hostfile, so one is written in the attempt's
  folder. Its host names are labels only: with `--no_ssh` nothing connects to them, `--node_rank`
  picks the line.
- accelerate: `--num_machines --machine_rank --main_process_ip --main_process_port`.
- `launcher: command`: the tool's own launcher reads NNODES, NODE_RANK, MASTER_ADDR and
  MASTER_PORT (LLaMA-Factory's names; it starts torchrun with them).
"""
from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from . import accelerate
from .plan import Plan
from .spec import AccelerateCfg, Recipe

#: The DeepSpeed hostfile's name in the attempt's folder.
HOSTFILE = "hostfile"
#: Launchers that can run one job over several nodes.
LAUNCHERS = ("torchrun", "deepspeed", "accelerate", "command")


def launcher_argv(recipe: Recipe, plan: Plan,
                  files_dir: Path | None) -> tuple[tuple[str, ...], tuple[tuple[Path, str], ...]]:
    """(launcher argv up to the script, derived files to write first) for this node."""
    node, python = recipe.node, recipe.python
    host, port = str(node.rendezvous_host), str(node.rendezvous_port)
    if recipe.launcher == "torchrun":
        # --max-restarts 0: restarts are guardrun's job, with a different configuration.
        return (python, "-m", "torch.distributed.run", "--nnodes", str(node.count),
                "--node-rank", str(node.rank), "--master-addr", host, "--master-port", port,
                "--rdzv-conf", f"timeout={max(1, round(node.timeout))}",
                "--nproc-per-node", str(plan.ranks), "--max-restarts", "0"), ()
    if recipe.launcher == "deepspeed":
        return _deepspeed(recipe, plan, files_dir)
    if recipe.launcher == "accelerate":
        cfg = replace(recipe.accelerate or AccelerateCfg(), num_machines=node.count, machine_rank=node.rank,
                      main_process_ip=host, main_process_port=node.rendezvous_port)
        return accelerate.launch_argv(python, cfg, plan.ranks, plan.gpu_ids, None), ()
    if recipe.launcher == "command":
        return recipe.command, ()
    raise ValueError(f"launcher {recipe.launcher} cannot run on {node.count} nodes")  # refused when loaded


def _deepspeed(recipe: Recipe, plan: Plan,
               files_dir: Path | None) -> tuple[tuple[str, ...], tuple[tuple[Path, str], ...]]:
    node = recipe.node
    labels = [f"node{index}" for index in range(node.count)]
    # --include's ids must be slots of the hostfile: as many slots as the highest id needs.
    slots = max(plan.gpu_ids) + 1 if plan.gpu_ids is not None else plan.ranks
    hostfile = (files_dir or Path("<attempt dir>")) / HOSTFILE
    argv = [recipe.python, "-m", "deepspeed.launcher.runner", "--hostfile", str(hostfile), "--no_ssh",
            "--node_rank", str(node.rank), "--master_addr", str(node.rendezvous_host),
            "--master_port", str(node.rendezvous_port)]
    if plan.gpu_ids is not None:  # the runner refuses --num_nodes beside --include
        ids = ",".join(map(str, plan.gpu_ids))
        argv += ["--include", "@".join(f"{label}:{ids}" for label in labels)]
    else:
        argv += ["--num_nodes", str(node.count), "--num_gpus", str(plan.ranks)]
    text = "".join(f"{label} slots={slots}\n" for label in labels)
    return tuple(argv), ((hostfile, text),)


def env(recipe: Recipe) -> dict[str, str]:
    """What `launcher: command` tools read to start their own multi-node launcher."""
    node = recipe.node
    if not node.multi or recipe.launcher != "command":
        return {}
    return {"NNODES": str(node.count), "NODE_RANK": str(node.rank),
            "MASTER_ADDR": str(node.rendezvous_host), "MASTER_PORT": str(node.rendezvous_port)}
