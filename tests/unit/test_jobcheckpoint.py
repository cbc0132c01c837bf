"""One checkpoint for the whole job (issue 16): node 0's decision file and the others following it."""
from __future__ import annotations

from pathlib import Path

import pytest

from fakes import FakeClock

from guardrun.launcher.checkpoints import Checkpoint
from guardrun.launcher.command import Resume
from guardrun.launcher.resume import Target
from guardrun.supervisor.record.shared import SharedDir
from guardrun.supervisor.run import jobcheckpoint as jc
from guardrun.supervisor.run.checkpointprep import AtTarget, ResumeError


def shared(root: Path, rank: int) -> SharedDir:
    return SharedDir(root, "job", 2, rank)


def node0(root: Path, attempt: int, prepare) -> Resume:
    return jc.for_node(shared(root, 0), attempt, prepare, FakeClock(), 10.0, say=lambda _: None)


def node1(root: Path, attempt: int, said: list[str] | None = None, clock=None) -> Resume:
    return jc.for_node(shared(root, 1), attempt, lambda: pytest.fail("node 1 must not prepare"),
                       clock or FakeClock(), 10.0, say=(said if said is not None else []).append)


def test_node_one_resumes_what_node_zero_prepared(tmp_path):
    ckpt = tmp_path / "out" / "checkpoint-4"
    ckpt.mkdir(parents=True)
    chosen = Resume(ckpt, load_universal=True)
    assert node0(tmp_path / "shared", 2, lambda: chosen) == chosen
    said = []
    assert node1(tmp_path / "shared", 2, said) == chosen
    assert said == ["resuming checkpoint-4, as node 0 decided"]
    assert (tmp_path / "shared" / "job" / "attempt-2" / "checkpoint-0.json").is_file()


def test_no_checkpoint_means_both_start_from_scratch(tmp_path):
    assert node0(tmp_path, 1, Resume) == Resume()
    said = []
    assert node1(tmp_path, 1, said) == Resume()
    assert said == ["starting from scratch, as node 0 decided"]


def test_a_refusal_on_node_zero_stops_every_node_with_its_reason(tmp_path):
    def refuse():
        raise ResumeError("the universal conversion of global_step4 failed (exit 1)")

    with pytest.raises(ResumeError, match="conversion of global_step4 failed"):
        node0(tmp_path, 3, refuse)
    with pytest.raises(ResumeError) as err:
        node1(tmp_path, 3)
    assert str(err.value) == ("node 0 could not make a checkpoint ready: the universal conversion of "
                              "global_step4 failed (exit 1)")


def test_a_finished_run_is_finished_on_every_node(tmp_path):
    done = AtTarget(Checkpoint(tmp_path / "checkpoint-10", 10), Target(10, 10))

    def at_end():
        raise done

    with pytest.raises(AtTarget):
        node0(tmp_path, 1, at_end)
    with pytest.raises(AtTarget) as err:
        node1(tmp_path, 1)
    assert str(err.value) == str(done) == "checkpoint-10 is at the target (step 10/10)"


def test_the_decision_that_arrives_while_waiting_is_taken(tmp_path):
    clock = FakeClock()
    clock.at(3.0, lambda: jc.publish(shared(tmp_path, 0), 1, jc.Decision("fresh")))
    assert node1(tmp_path, 1, clock=clock) == Resume()
    assert set(clock.sleeps) == {jc.POLL} and len(clock.sleeps) == 3 / jc.POLL


def test_no_decision_within_the_timeout_calls_node_zero_lost(tmp_path):
    clock = FakeClock()
    with pytest.raises(jc.DecisionTimeout, match="within 10s .* node 0 is lost"):
        node1(tmp_path, 5, clock=clock)
    assert clock.now - 1000.0 == pytest.approx(10.0)


def test_a_stop_while_waiting_ends_the_wait(tmp_path):
    with pytest.raises(ResumeError, match="stopped while waiting"):
        jc.await_decision(shared(tmp_path, 1), 1, FakeClock(), 60.0, should_stop=lambda: True)


@pytest.mark.parametrize("text, why", [
    ("{not json", "is not JSON"),
    ("[1]", "is not a JSON object"),
    ('{"outcome": "maybe"}', "unknown outcome 'maybe'"),
    ('{"outcome": "resume", "path": null}', "resume without a path"),
    ('{"outcome": "at_target", "path": "/x", "target": null}', "NoneType"),
])
def test_a_damaged_decision_is_a_clear_refusal(tmp_path, text, why):
    path = tmp_path / "job" / "attempt-1" / "checkpoint-0.json"
    path.parent.mkdir(parents=True)
    path.write_text(text)
    with pytest.raises(ResumeError) as err:
        node1(tmp_path, 1)
    assert str(err.value).startswith("node 0's checkpoint decision ") and str(path) in str(err.value)
    assert "is damaged" in str(err.value) and why in str(err.value)


def test_a_checkpoint_this_node_does_not_see_means_no_shared_filesystem(tmp_path):
    jc.publish(shared(tmp_path, 0), 1, jc.Decision("resume", Resume(tmp_path / "elsewhere" / "checkpoint-2")))
    clock = FakeClock()
    with pytest.raises(ResumeError, match="must be on a filesystem every node shares"):
        node1(tmp_path, 1, clock=clock)
    assert clock.now - 1000.0 == pytest.approx(10.0)           # looked for it until the timeout


def test_a_checkpoint_that_shows_up_late_here_is_waited_for(tmp_path):
    late = tmp_path / "out" / "checkpoint-2"
    jc.publish(shared(tmp_path, 0), 1, jc.Decision("resume", Resume(late)))
    clock = FakeClock()
    clock.at(2.0, lambda: late.mkdir(parents=True))             # NFS's cached listing catches up
    assert node1(tmp_path, 1, clock=clock) == Resume(late)


def test_an_unwritable_shared_dir_is_said_on_node_zero(tmp_path):
    (tmp_path / "file").write_text("")
    with pytest.raises(ResumeError, match="cannot write the checkpoint decision for the other nodes: cannot write .*checkpoint-0.json: Not a directory"):
        node0(tmp_path / "file", 1, Resume)
