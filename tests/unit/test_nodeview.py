"""Issue 16: `guardrun status` shows every node's part of a multi-node job from the shared folder."""
from __future__ import annotations

import textwrap

from guardrun.supervisor.cli.nodeview import lines, part, status_lines
from guardrun.supervisor.record.shared import SharedDir


def test_each_node_part_reads_from_its_newest_file():
    assert part({}) == "running (nothing written yet)"
    assert part({"stop": {"kind": "host_oom", "evidence": "tree 1.3 GiB > 1.2 GiB"}}) == \
        "stopping its part (host_oom: tree 1.3 GiB > 1.2 GiB)"
    assert part({"stop": {"kind": "host_oom"}, "node": {"kind": "host_oom", "evidence": "over the limit",
                                                        "host": "n2", "pid": 77, "step": 5}}) == \
        "ended host_oom (over the limit) [host n2, pid 77, step 5]"
    assert part({"node": {"kind": "success"}, "lost": {"why": "no word from node 1 within 600s"}}) == \
        "gave the attempt up: no word from node 1 within 600s"


def test_every_node_has_a_line_even_the_silent_ones():
    assert lines(3, 2, 1, "/shared/.guardrun", {0: {"node": {"kind": "success", "host": "n1"}}}) == [
        "  nodes: 2, this is node 1; shared_dir /shared/.guardrun",
        "  job attempt 3:",
        "    node 0: ended success [host n1]",
        "    node 1: running (nothing written yet)",
    ]
    assert lines(None, 2, 0, "/s", {})[1] == "  no attempt in the shared folder yet"


def test_status_lines_read_the_recipe_and_the_shared_folder(tmp_path, monkeypatch):
    monkeypatch.setenv("GUARDRUN_NODE_RANK", "0")
    (tmp_path / "train.py").write_text("")
    recipe = tmp_path / "job.yaml"
    recipe.write_text(textwrap.dedent(f"""
        launcher: torchrun
        script: train.py
        nodes: {{count: 2, rendezvous: "127.0.0.1:29400", shared_dir: {tmp_path / 'shared'}}}
        """))
    SharedDir(tmp_path / "shared", "job", 2, 1).put(1, "stop", {"kind": "user_error", "evidence": "bad flag"})
    assert status_lines(str(recipe))[1:] == ["  job attempt 1:", "    node 0: running (nothing written yet)",
                                             "    node 1: stopping its part (user_error: bad flag)"]


def test_no_node_lines_for_one_machine_or_a_recipe_gone(tmp_path):
    (tmp_path / "train.py").write_text("")
    (tmp_path / "one.yaml").write_text("launcher: python\nscript: train.py\n")
    assert status_lines(str(tmp_path / "one.yaml")) == []
    assert status_lines(str(tmp_path / "gone.yaml")) == [] and status_lines(None) == []
