"""`guardrun logs`: which file and lines, and following across attempts, without real waits."""
from __future__ import annotations

import io

from guardrun.supervisor.cli.logview import Follower, copy, explain_empty, keep, pick_log, rank_prefixes, written_since


def attempt(job, number: int, text: str | None = None):
    folder = job / "attempts" / str(number)
    folder.mkdir(parents=True, exist_ok=True)
    if text is not None:
        (folder / "output.log").write_text(text)
    return folder


def test_rank_lines_are_picked_by_the_launchers_prefixes():
    prefixes = rank_prefixes(1)
    assert keep("[1] loss 0.3", prefixes) and keep("[rank1]: Traceback", prefixes)
    assert keep("[default1]:step 3", prefixes)
    assert not keep("[0] loss", prefixes) and not keep("loss 0.3 [1]", prefixes)
    assert keep("anything", None)


def test_a_rank_file_wins_over_filtering(tmp_path):
    folder = attempt(tmp_path, 3, "[rank0] a\n[rank1] b\n")
    plain = pick_log(tmp_path, 3, 1)
    assert plain.path == folder / "output.log" and plain.prefixes == rank_prefixes(1)
    assert "no per-rank log (attempts/3/ranks/1.log)" in plain.note
    (folder / "ranks").mkdir()
    (folder / "ranks" / "1.log").write_text("own\n")
    own = pick_log(tmp_path, 3, 1)
    assert own.path == folder / "ranks" / "1.log" and own.prefixes is None and own.note == ""
    out = io.StringIO()
    assert copy(plain, out) == 1 and out.getvalue() == "[rank1] b\n"


def test_follow_switches_to_the_next_attempt_and_ends_with_the_supervisor(tmp_path):
    attempt(tmp_path, 1, "one\ntwo (no newline yet)")
    out, said = io.StringIO(), []
    steps = iter([
        lambda: (tmp_path / "attempts/1/output.log").open("a").write(" end\n"),
        lambda: attempt(tmp_path, 2, "second attempt\n"),
        lambda: (tmp_path / "attempts/2/output.log").open("a").write("last"),
    ])
    alive = iter([True] * 8 + [False] * 3)

    def sleep(_seconds):  # each wait, the writer does its next thing
        next(steps, lambda: None)()

    Follower(tmp_path, pick_log(tmp_path, 1, None), pinned=False, rank=None,
             alive=lambda: next(alive), sleep=sleep, out=out, say=said.append).run()
    assert out.getvalue() == "one\ntwo (no newline yet) end\nsecond attempt\nlast\n"
    assert said == ["attempt 2 started"]


def test_follow_of_a_pinned_attempt_does_not_move_on(tmp_path):
    attempt(tmp_path, 1, "first\n")
    attempt(tmp_path, 2, "second\n")
    out = io.StringIO()
    alive = iter([True, True, False, False])
    Follower(tmp_path, pick_log(tmp_path, 1, None), pinned=True, rank=None,
             alive=lambda: next(alive), sleep=lambda s: None, out=out, say=print).run()
    assert out.getvalue() == "first\n"


def test_follow_before_the_first_attempt_waits_for_it(tmp_path):
    out, said = io.StringIO(), []
    steps = iter([lambda: attempt(tmp_path, 1, "[rank0] hi\n[rank1] ho\n")])
    alive = iter([True, True, False, False, False])
    Follower(tmp_path, pick_log(tmp_path, 0, 1), pinned=False, rank=1, alive=lambda: next(alive),
             sleep=lambda s: next(steps, lambda: None)(), out=out, say=said.append).run()
    assert out.getvalue() == "[rank1] ho\n"
    assert said[0] == "attempt 1 started" and "no per-rank log" in said[1]


def test_follow_with_last_starts_at_the_last_lines_then_follows(tmp_path):
    attempt(tmp_path, 1, "a\nb\nc\n")
    out = io.StringIO()
    steps = iter([lambda: (tmp_path / "attempts/1/output.log").open("a").write("d\n")])
    alive = iter([True, True, False, False])
    Follower(tmp_path, pick_log(tmp_path, 1, None), pinned=False, rank=None, alive=lambda: next(alive),
             sleep=lambda _s: next(steps, lambda: None)(), out=out, say=lambda _t: None, last=2).run()
    assert out.getvalue() == "b\nc\nd\n"


def test_copy_of_the_last_lines(tmp_path):
    attempt(tmp_path, 1, "[0] a\n[1] b\n[0] c\n[1] d\n")
    out = io.StringIO()
    assert copy(pick_log(tmp_path, 1, 1), out, last=1) == 1 and out.getvalue() == "[1] d\n"


def journal(job, *events):
    import json
    (job / "events.jsonl").write_text("".join(json.dumps(e) + "\n" for e in events) + "{torn")


def test_why_an_attempt_shows_nothing(tmp_path):
    journal(tmp_path, {"event": "guardrun.attempt.started", "attempt": 1, "ranks": 2},
            {"event": "guardrun.attempt.started", "attempt": 2, "ranks": 1},
            {"event": "guardrun.attempt.started", "attempt": 3, "ranks": 1},
            {"event": "guardrun.attempt.spawn_failed", "attempt": 3, "program": "torchrun",
             "error": "[Errno 13] Permission denied"})
    assert explain_empty(tmp_path, 2, 1) == "attempt 2 ran rank 0 only"
    assert explain_empty(tmp_path, 1, 3) == "attempt 1 ran ranks 0-1 only"
    assert explain_empty(tmp_path, 1, 1) == ""  # rank 1 ran: it printed nothing
    assert explain_empty(tmp_path, 3, None) == ("attempt 3 never started (spawn failed: torchrun: "
                                                "[Errno 13] Permission denied)")
    assert explain_empty(tmp_path, 4, 0) == ""  # the journal says nothing of it


def test_written_since_picks_attempts_by_their_logs_time(tmp_path):
    import os
    for number in (1, 2, 3):
        attempt(tmp_path, number, "x\n")
        os.utime(tmp_path / "attempts" / str(number) / "output.log", (100.0 * number, 100.0 * number))
    attempt(tmp_path, 4)  # no log yet
    assert written_since(tmp_path, [1, 2, 3, 4], 200.0) == [2, 3]
