"""The node view of a multi-node job: `nodes:` + --node-rank + SLURM's environment (launcher/nodes.py)."""
from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from guardrun.launcher import nodes
from guardrun.launcher.nodes import NodeError, parse_nodelist, resolve
from guardrun.launcher.recipe import RecipeError, load_recipe
from guardrun.launcher.spec import Nodes, NodeView

SHARED = Path("/shared/.guardrun")
SLURM = {"SLURM_NNODES": "2", "SLURM_JOB_NODELIST": "gpu[07-08]", "SLURM_NODEID": "1"}


@pytest.mark.parametrize("nodelist, hosts", [
    ("node01", ["node01"]),
    ("node[01-04,07]", ["node01", "node02", "node03", "node04", "node07"]),
    ("a1,b[2-3]", ["a1", "b2", "b3"]),
    ("n[1-2]", ["n1", "n2"]),
    ("gpu[08-10]", ["gpu08", "gpu09", "gpu10"]),          # the low end's width is kept
    ("r[1-2]-n[1-2]", ["r1-n1", "r1-n2", "r2-n1", "r2-n2"]),
    ("x[3],y", ["x3", "y"]),
])
def test_nodelist_forms(nodelist, hosts):
    assert parse_nodelist(nodelist) == hosts


@pytest.mark.parametrize("nodelist, fragment", [
    ("node[01-04", "unbalanced brackets"),
    ("node]1[", "unbalanced brackets"),
    ("node[4-1]", "'4-1' is not a number or a range"),
    ("node[a-b]", "'a-b' is not a number or a range"),
    (" , ", "names no host"),
])
def test_bad_nodelists_are_said(nodelist, fragment):
    with pytest.raises(NodeError, match=fragment.replace("[", r"\[")):
        parse_nodelist(nodelist)


def test_hostnames_falls_back_to_the_parser_without_scontrol(monkeypatch):
    monkeypatch.setenv("PATH", "/nonexistent")
    assert nodes.hostnames("n[1-2]") == ["n1", "n2"]


@pytest.mark.parametrize("section, env, view", [
    # no `nodes:`, no SLURM: this machine only, whatever rank variables say
    (Nodes(), {}, NodeView()),
    (Nodes(), {"GUARDRUN_NODE_RANK": "3"}, NodeView()),
    (Nodes(count=1, shared_dir=SHARED), {}, NodeView(shared_dir=SHARED)),
    # the recipe's count and rendezvous; the rank from GUARDRUN_NODE_RANK (what --node-rank sets)
    (Nodes(count=2, rendezvous=("node01", 29500), shared_dir=SHARED, timeout=60.0),
     {"GUARDRUN_NODE_RANK": "1"},
     NodeView(count=2, rank=1, rendezvous_host="node01", rendezvous_port=29500, shared_dir=SHARED,
              timeout=60.0)),
    # SLURM: count, rank and rendezvous (first host, port 29400) from the allocation
    (Nodes(shared_dir=SHARED), SLURM,
     NodeView(count=2, rank=1, rendezvous_host="gpu07", rendezvous_port=29400, shared_dir=SHARED)),
    # the recipe's keys win over SLURM's; GUARDRUN_NODE_RANK over SLURM_NODEID
    (Nodes(rendezvous=("10.0.0.1", 12345), shared_dir=SHARED), {**SLURM, "GUARDRUN_NODE_RANK": "0"},
     NodeView(count=2, rank=0, rendezvous_host="10.0.0.1", rendezvous_port=12345, shared_dir=SHARED)),
    # `count: 1` keeps a recipe on one machine inside a multi-node allocation
    (Nodes(count=1), SLURM, NodeView()),
    # a one-node allocation is one machine
    (Nodes(), {"SLURM_NNODES": "1", "SLURM_JOB_NODELIST": "gpu07", "SLURM_NODEID": "0"}, NodeView()),
])
def test_resolve(section, env, view):
    assert resolve(section, env) == view


@pytest.mark.parametrize("section, env, key, fragment", [
    (Nodes(count=2, rendezvous=("h", 1), shared_dir=SHARED), {}, "nodes.count",
     "2 nodes: say which one this is with --node-rank N (0 to 1"),
    (Nodes(count=2, rendezvous=("h", 1), shared_dir=SHARED), {"GUARDRUN_NODE_RANK": "2"}, "nodes.count",
     "node rank 2 (GUARDRUN_NODE_RANK) is not below the node count 2"),
    (Nodes(count=2, rendezvous=("h", 1), shared_dir=SHARED), {"GUARDRUN_NODE_RANK": "one"}, "nodes.count",
     "GUARDRUN_NODE_RANK='one': expected an integer >= 0"),
    (Nodes(shared_dir=SHARED), {**SLURM, "SLURM_NODEID": "5"}, "nodes.count",
     "node rank 5 (SLURM_NODEID) is not below the node count 2"),
    (Nodes(count=2, shared_dir=SHARED), {"GUARDRUN_NODE_RANK": "0"}, "nodes.rendezvous",
     "2 nodes need a rendezvous: give nodes.rendezvous"),
    (Nodes(count=2, rendezvous=("h", 1)), {"GUARDRUN_NODE_RANK": "0"}, "nodes.shared_dir",
     "2 nodes need a folder every node sees"),
    (Nodes(shared_dir=SHARED), {**SLURM, "SLURM_NNODES": "two"}, "nodes.count",
     "SLURM_NNODES='two': expected an integer >= 1"),
])
def test_resolve_errors(section, env, key, fragment):
    with pytest.raises(NodeError) as caught:
        resolve(section, env)
    assert caught.value.key == key
    assert fragment in str(caught.value)


def _recipe(tmp_path: Path, nodes_yaml: str, checkpoints: bool = True) -> Path:
    (tmp_path / "train.py").write_text("")
    body = "launcher: torchrun\nscript: train.py\n"
    if checkpoints:
        body += "checkpoints:\n  dir: out\n"
    path = tmp_path / "job.yaml"
    path.write_text(body + textwrap.dedent(nodes_yaml))
    return path


def test_recipe_nodes_section_and_its_defaults(tmp_path):
    path = _recipe(tmp_path, "nodes:\n  count: 2\n  rendezvous: node01:29400\n  timeout: 90s\n")
    recipe = load_recipe(path, env={"GUARDRUN_NODE_RANK": "1"})
    assert recipe.nodes == Nodes(count=2, rendezvous=("node01", 29400), shared_dir=tmp_path / "out" / ".guardrun",
                                 timeout=90.0)
    assert recipe.node == NodeView(count=2, rank=1, rendezvous_host="node01", rendezvous_port=29400,
                                   shared_dir=tmp_path / "out" / ".guardrun", timeout=90.0)
    assert load_recipe(_recipe(tmp_path, ""), env={}).node == NodeView(
        shared_dir=tmp_path / "out" / ".guardrun")


@pytest.mark.parametrize("nodes_yaml, checkpoints, line, key, fragment", [
    # a value's problem: that value's line (line 5 is `nodes:`)
    ("nodes:\n  count: 0\n", True, 6, "nodes.count", "expected an integer >= 1"),
    ("nodes:\n  count: two\n", True, 6, "nodes.count", "expected an integer >= 1"),
    ("nodes:\n  rendezvous: node01\n", True, 6, "nodes.rendezvous", "expected host:port of node rank 0"),
    ("nodes:\n  rendezvous: node01:99999\n", True, 6, "nodes.rendezvous", "expected host:port"),
    ("nodes:\n  timeout: soon\n", True, 6, "nodes.timeout", "duration"),
    ("nodes:\n  hosts: 2\n", True, 6, "nodes.hosts", "unknown key"),
    # what the section as a whole lacks: the `nodes:` line
    ("nodes:\n  count: 2\n  rendezvous: h:1\n", False, 3, "nodes.shared_dir", "a folder every node sees"),
    ("nodes:\n  count: 2\n", True, 5, "nodes.rendezvous", "need a rendezvous"),
    ("nodes:\n  count: 3\n  rendezvous: h:1\n", True, 5, "nodes.count", "node rank 4"),
])
def test_recipe_nodes_errors_name_file_and_line(tmp_path, nodes_yaml, checkpoints, line, key, fragment):
    path = _recipe(tmp_path, nodes_yaml, checkpoints)
    with pytest.raises(RecipeError) as caught:
        load_recipe(path, env={"GUARDRUN_NODE_RANK": "4" if "count: 3" in nodes_yaml else "0"})
    assert (caught.value.path, caught.value.line, caught.value.key) == (path, line, key)
    assert fragment.lower() in caught.value.message.lower()


def test_run_without_a_node_rank_is_an_error(tmp_path):
    path = _recipe(tmp_path, "nodes:\n  count: 2\n  rendezvous: h:1\n")
    with pytest.raises(RecipeError, match="--node-rank N"):
        load_recipe(path, env={})


def test_plan_without_a_node_rank_shows_node_zero_with_a_warning(tmp_path):
    path = _recipe(tmp_path, "nodes:\n  count: 2\n  rendezvous: h:1\n")
    recipe = load_recipe(path, env={}, missing_ok=True)
    assert recipe.node.rank == 0 and recipe.node.count == 2
    assert any("--node-rank N" in warning and "shown as node rank 0" in warning for warning in recipe.warnings)


def test_ipv6_rendezvous(tmp_path):
    recipe = load_recipe(_recipe(tmp_path, "nodes:\n  count: 2\n  rendezvous: '[::1]:29400'\n"),
                         env={"GUARDRUN_NODE_RANK": "0"})
    assert (recipe.node.rendezvous_host, recipe.node.rendezvous_port) == ("::1", 29400)


@pytest.mark.parametrize("flags, fragment", [
    ([], "2 nodes: say which one this is with --node-rank N"),
    (["--node-rank", "5"], "node rank 5 (GUARDRUN_NODE_RANK) is not below the node count 2"),
    (["--node-rank", "-1"], "Invalid value for '--node-rank'"),
])
def test_run_says_a_missing_or_wrong_node_rank_and_exits_2(tmp_path, monkeypatch, flags, fragment):
    from click.testing import CliRunner

    from guardrun.supervisor.cli.main import main
    monkeypatch.setenv("GUARDRUN_NODE_RANK", "")  # restored after the test: --node-rank sets it
    monkeypatch.setenv("GUARDRUN_STATE_DIR", str(tmp_path / "state"))
    path = _recipe(tmp_path, "nodes:\n  count: 2\n  rendezvous: h:1\n")
    result = CliRunner().invoke(main, ["run", str(path), *flags])
    assert result.exit_code == 2, result.output
    assert fragment in result.output
    assert "Traceback" not in result.output


def test_plan_shows_the_node_view(tmp_path, monkeypatch):
    from click.testing import CliRunner

    from guardrun.supervisor.cli.main import main
    monkeypatch.setenv("GUARDRUN_NODE_RANK", "")
    for name in ("SLURM_JOB_NODELIST", "SLURM_NNODES", "SLURM_NODEID"):
        monkeypatch.delenv(name, raising=False)
    path = _recipe(tmp_path, "nodes:\n  count: 2\n  rendezvous: node01:29400\n")
    lines = CliRunner().invoke(main, ["plan", str(path)]).output.splitlines()
    assert (f"nodes: 2, this is node rank 0; rendezvous node01:29400; shared_dir {tmp_path}/out/.guardrun; "
            "barrier timeout 600s") in lines
    assert any(line.startswith("warning: ") and "--node-rank N" in line for line in lines)
    command = next(line for line in lines if line.startswith("   command: "))
    assert "--nnodes 2 --node-rank 0 --master-addr node01 --master-port 29400" in command
    single = CliRunner().invoke(main, ["plan", str(_recipe(tmp_path, ""))]).output
    assert "nodes:" not in single


def _fake_scontrol(folder: Path, body: str) -> None:
    folder.mkdir(exist_ok=True)
    (folder / "scontrol").write_text("#!/bin/sh\n" + body)
    (folder / "scontrol").chmod(0o755)


def test_hostnames_asks_scontrol_first_and_falls_back_when_it_fails(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path / "bin"))
    _fake_scontrol(tmp_path / "bin", 'echo "from-scontrol-a"; echo "from-scontrol-b"\n')
    assert nodes.hostnames("n[1-2]") == ["from-scontrol-a", "from-scontrol-b"]
    _fake_scontrol(tmp_path / "bin", 'echo "scontrol: error: no slurm.conf" >&2; exit 1\n')
    assert nodes.hostnames("n[1-2]") == ["n1", "n2"]


def test_tmux_hands_the_node_rank_to_the_run_in_its_session(tmp_path, monkeypatch):
    from click.testing import CliRunner

    from guardrun.supervisor.cli.main import main
    from guardrun.supervisor.unattended import tmux
    monkeypatch.setenv("GUARDRUN_NODE_RANK", "")
    monkeypatch.setenv("GUARDRUN_STATE_DIR", str(tmp_path / "state"))
    made = []
    monkeypatch.setattr(tmux, "has_session", lambda base, session: False)
    monkeypatch.setattr(tmux, "create", lambda base, session, run, environ, cwd: made.append(dict(environ)))
    path = _recipe(tmp_path, "nodes:\n  count: 2\n  rendezvous: h:1\n")
    result = CliRunner().invoke(main, ["tmux", str(path), "--node-rank", "1", "--no-attach"])
    assert result.exit_code == 0, result.output
    assert made[0]["GUARDRUN_NODE_RANK"] == "1"


def test_the_global_batch_said_and_journaled_is_every_nodes():
    """The plan's arithmetic is per node (each node runs the same plan); what the user reads
    (the attempt line, `plan`) and what the journal keeps is the job's: × nodes."""
    from guardrun.launcher.plan import Plan, batch_words
    plan = Plan(rungs=(), ranks=2, gpu_ids=None, per_device=4, grad_accum=2, global_batch=16,
                target_global_batch=16)
    assert batch_words(plan) == "micro-batch 4 × accumulation 2 × 2 = global 16"
    assert batch_words(plan, 2) == "micro-batch 4 × accumulation 2 × 2 × 2 nodes = global 32"
