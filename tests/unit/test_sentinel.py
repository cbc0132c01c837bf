"""NaN runs, hangs, the recipe's regexes, and how they end an attempt: pure decisions."""
from __future__ import annotations

from pathlib import Path

import pytest

from guardrun.launcher.failures import Failure, Kind
from guardrun.launcher.spec import ProgressPatterns, SuccessEvidence
from guardrun.supervisor.diagnose.lines import iter_lines
from guardrun.supervisor.diagnose.logs import parse_line
from guardrun.supervisor.diagnose.patterns import Patterns
from guardrun.supervisor.run.policy import AttemptEnd, classify, signature
from guardrun.supervisor.diagnose.sentinel import HangWatch, NanTracker, judge_hang, judge_nan

OUTPUTS = Path(__file__).resolve().parent.parent / "data" / "outputs"


def tracked(name: str) -> NanTracker:
    """A NanTracker fed a captured output the way OutputReader feeds it (step from the bar)."""
    tracker, step = NanTracker(), None
    with open(OUTPUTS / name, "rb") as handle:
        for line in iter_lines(handle):
            for event in parse_line(line):
                if event.step is not None:
                    step = event.step
                    tracker.see_step(step)
                if event.kind in ("loss", "nan"):
                    tracker.feed(event, step)
    return tracker


@pytest.mark.parametrize("name,streak,first,unsafe_from", [
    # transformers 5.17 on a GPU, NaN from step 4, a log every step: the bar before each log lags by one
    ("real_gpu_hf_nan_filtered.txt", 5, "{'loss': '0', 'grad_norm': 'nan'", 3),
    ("real_gpu_hf_nan_unfiltered.txt", 5, "{'loss': 'nan', 'grad_norm': 'nan'", 3),
    # transformers 5.24 on CPU, a log every 2 steps, NaN from step 4 (logged at 4: '3.64' is the filtered mean)
    ("real_hf_trainer_nan_filtered.txt", 4, "{'loss': '3.64', 'grad_norm': 'nan'", 1),
    ("hand_xtuner_mmengine_nan.txt", 1, "Iter(train) [  20/5198]", 11),
])
def test_nan_runs_in_real_outputs(name, streak, first, unsafe_from):
    state = tracked(name).state()
    assert state.streak == streak
    assert first in state.evidence
    assert state.unsafe_from == unsafe_from


def test_unsafe_from_is_never_after_the_first_nan_and_never_before_the_last_clean_log():
    tracker = NanTracker()
    tracker.see_step(40)  # resumed from checkpoint-40
    tracker.feed(parse_line("{'loss': nan, 'grad_norm': nan}")[0], 45)
    assert tracker.unsafe_from() == 41  # no finite log in this attempt: right after its resume point
    tracker.feed(parse_line("{'loss': 1.5, 'grad_norm': 0.3}")[0], 46)
    assert tracker.streak == 0 and tracker.state().unsafe_from is None
    tracker.feed(parse_line("{'loss': '0', 'grad_norm': 'nan'}")[0], 50)
    assert tracker.unsafe_from() == 47


def test_the_same_nan_line_from_every_rank_counts_once():
    tracker = NanTracker()
    for rank in range(4):
        tracker.feed(parse_line(f"[rank{rank}]: {{'loss': nan, 'grad_norm': nan, 'epoch': 0.5}}")[0], 7)
    assert tracker.streak == 1


@pytest.mark.parametrize("streak,patience,act", [(0, 1, False), (1, 1, True), (2, 3, False), (3, 3, True),
                                                (1, 0, True)])
def test_judge_nan(streak, patience, act):
    assert judge_nan(streak, patience) is act


def test_hang_watch_counts_silence_from_the_last_line_or_checkpoint_write():
    watch = HangWatch(started=100.0)
    assert watch.observe(101.0, lines=0, checkpoint_activity=None) == 1.0
    assert watch.observe(102.0, lines=5, checkpoint_activity=None) == 0.0
    assert watch.observe(110.0, lines=5, checkpoint_activity=108.0) == 2.0   # a save in progress
    assert watch.observe(130.0, lines=5, checkpoint_activity=108.0) == 22.0
    assert judge_hang(22.0, 20.0) and not judge_hang(19.9, 20.0) and not judge_hang(1e9, None)


# --- recipe regexes -------------------------------------------------------------------------

def test_recipe_regexes_give_progress_loss_and_nan():
    patterns = Patterns.from_recipe(ProgressPatterns(r"it (\d+)/(\d+)", r"L=(\S+)"), None)
    progress, loss = patterns.scan("my loop it 7/30 L=0.25")
    assert (progress.kind, progress.step, progress.total) == ("progress", 7, 30)
    assert (loss.kind, loss.step, loss.loss) == ("loss", 7, 0.25)
    [nan] = [e for e in patterns.scan("it 8/30 L=nan") if e.kind != "progress"]
    assert nan.kind == "nan" and nan.step == 8
    assert patterns.scan("nothing here") == ()
    assert patterns.scan("L=" + "9" * 100_000)[0].loss is not None  # one long line: read, never stalled


def test_success_regex():
    patterns = Patterns.from_recipe(None, SuccessEvidence(regex=r"Training (completed|finished)"))
    assert patterns.succeeded("INFO Training completed. Do not forget to share your model")
    assert not patterns.succeeded("Training crashed")
    assert patterns.scan("Training completed") == ()


# --- how these end an attempt ---------------------------------------------------------------

def test_a_nan_stop_records_the_rollback_bound_as_its_step():
    end = AttemptEnd(exit_code=-15, stopped_for=Failure(Kind.NAN_LOSS, "{'loss': nan}", step=12),
                     last_step=16, attempt=1)
    assert classify(end) == Failure(Kind.NAN_LOSS, "{'loss': nan}", attempt=1, step=12)
    died = AttemptEnd(exit_code=1, events=tuple(parse_line("{'loss': nan, 'grad_norm': 1.0}")),
                      last_step=30, nan_from=21, attempt=2)
    assert classify(died).step == 21


def test_exit_0_without_the_success_evidence_is_unknown():
    failure = classify(AttemptEnd(exit_code=0, success_missing="no line matched success.regex 'done'"))
    assert failure.kind is Kind.UNKNOWN
    assert failure.evidence == "exit 0 without the success evidence: no line matched success.regex 'done'"
    assert classify(AttemptEnd(exit_code=0)) is None


def test_a_crash_on_the_way_out_after_the_success_evidence_is_a_finished_job():
    """A rank aborting in teardown after the trainer said it finished: no relaunch."""
    assert classify(AttemptEnd(exit_code=1, success_seen=True)) is None
    assert classify(AttemptEnd(exit_code=1)).kind is Kind.UNKNOWN
    stopped = Failure(Kind.HOST_OOM, "tree over the limit")
    assert classify(AttemptEnd(exit_code=-15, success_seen=True, stopped_for=stopped)).kind is Kind.HOST_OOM


def first(evidence_line: str, **fields) -> AttemptEnd:
    return AttemptEnd(exit_code=1, events=tuple(parse_line(evidence_line)), **fields)


@pytest.mark.parametrize("before,now,took,progressed,kind", [
    # the same error twice within the window, before any progress: a crash loop
    ("RuntimeError: bad config (pid 41)", "RuntimeError: bad config (pid 97)", 5.0, False, Kind.USER_ERROR),
    ("[rank0]: KeyError: 'images'", "[rank3]: KeyError: 'images'", 5.0, False, Kind.USER_ERROR),
    ("NCCL WARN ... Connection reset by peer", "NCCL WARN ... Connection reset by peer", 30.0, False,
     Kind.USER_ERROR),
    # too late, after progress, or a different error: not a loop
    ("RuntimeError: bad config", "RuntimeError: bad config", 900.0, False, Kind.UNKNOWN),
    ("RuntimeError: bad config", "RuntimeError: bad config", 5.0, True, Kind.UNKNOWN),
    ("RuntimeError: bad config", "RuntimeError: other", 5.0, False, Kind.UNKNOWN),
    # a kind a rung answers is not a loop: the configuration changed
    ("torch.OutOfMemoryError: CUDA out of memory.", "torch.OutOfMemoryError: CUDA out of memory.", 5.0, False,
     Kind.CUDA_OOM),
])
def test_crash_loop_guard(before, now, took, progressed, kind):
    last = classify(first(before, attempt=1, took=took))
    found = classify(first(now, attempt=2, took=took, progressed=progressed), [last], startup_window=600.0)
    assert found.kind is kind


def test_signature_masks_what_changes_between_runs():
    assert signature("[rank2]: exitcode: 1 (pid: 4242) at 2026-11-25 10:59:30,123") == \
        signature("[rank5]: exitcode: 1 (pid: 77) at 2026-11-26 01:02:03,456")
    assert signature("exit code 1") != signature("exit code 2")
