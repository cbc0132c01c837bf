"""Issue 16: `guardrun status` shows every node's part of a multi-node job from the shared folder."""
from __future__ import annotations

import json

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


def journal(root, *entries: dict) -> None:
    (root / "job").mkdir(parents=True)
    (root / "job" / "events.jsonl").write_text("".join(json.dumps(e) + "\n" for e in entries))


def test_status_lines_follow_the_journal_to_the_shared_folder(tmp_path, monkeypatch):
    monkeypatch.setenv("GUARDRUN_STATE_DIR", str(tmp_path / "state"))
    folder = tmp_path / "shared" / "job"
    journal(tmp_path / "state", {"event": "guardrun.attempt.started", "attempt": 1},
            {"event": "guardrun.node.attempt", "attempt": 1, "job_attempt": 1, "node": 1, "nodes": 2,
             "shared_dir": str(folder)})
    SharedDir(tmp_path / "shared", "job", 2, 1).put(1, "stop", {"kind": "user_error", "evidence": "bad flag"})
    assert status_lines("job") == [f"  nodes: 2, this is node 1; shared_dir {folder}", "  job attempt 1:",
                                   "    node 0: running (nothing written yet)",
                                   "    node 1: stopping its part (user_error: bad flag)"]


def test_no_node_lines_for_one_machine_or_no_journal(tmp_path, monkeypatch):
    monkeypatch.setenv("GUARDRUN_STATE_DIR", str(tmp_path / "state"))
    assert status_lines("job") == []
    journal(tmp_path / "state", {"event": "guardrun.attempt.started", "attempt": 1})
    assert status_lines("job") == []
