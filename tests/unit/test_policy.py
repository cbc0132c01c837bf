"""The pure policy: memory verdicts and how an attempt's end is classified."""
from __future__ import annotations

import pytest

from guardrun.launcher.failures import Failure, Kind
from guardrun.supervisor.diagnose.logs import parse_line
from guardrun.supervisor.run.policy import (AttemptEnd, MemoryLimits, MemoryReading, backoff, classify,
                                        judge_memory)

GIB = 1 << 30
LIMITS = MemoryLimits(tree=10 * GIB, min_available=2 * GIB)


def test_far_below_the_limit_keeps_going_without_pss():
    verdict = judge_memory(MemoryReading(tree_fast=8 * GIB, available=20 * GIB), LIMITS)
    assert not verdict.stop and not verdict.confirm


def test_near_the_limit_asks_for_pss_and_never_stops_on_the_double_count():
    reading = MemoryReading(tree_fast=12 * GIB, available=20 * GIB)
    assert judge_memory(reading, LIMITS).confirm
    confirmed = MemoryReading(tree_fast=12 * GIB, available=20 * GIB, tree_pss=7 * GIB)
    assert not judge_memory(confirmed, LIMITS).stop


def test_pss_over_the_limit_is_host_oom():
    reading = MemoryReading(tree_fast=12 * GIB, available=20 * GIB, tree_pss=10 * GIB)
    verdict = judge_memory(reading, LIMITS)
    assert verdict.failure.kind is Kind.HOST_OOM
    assert verdict.failure.evidence == "job memory 10.0 GiB (PSS) reached the limit 10.0 GiB"


def test_low_mem_available_stops_even_a_small_tree():
    verdict = judge_memory(MemoryReading(tree_fast=1 * GIB, available=1 * GIB), LIMITS)
    assert verdict.failure.kind is Kind.HOST_OOM
    assert "MemAvailable 1.0 GiB fell below min_available 2.0 GiB" == verdict.failure.evidence


def test_no_limits_never_stops():
    verdict = judge_memory(MemoryReading(tree_fast=100 * GIB, available=0), MemoryLimits(None, None))
    assert verdict == judge_memory(MemoryReading(0, 0), MemoryLimits(None, None))
    assert not verdict.stop


def events_of(*lines: str):
    return tuple(e for line in lines for e in parse_line(line))


@pytest.mark.parametrize("end,kind", [
    (AttemptEnd(exit_code=0), None),
    (AttemptEnd(exit_code=1, interrupted=True), Kind.INTERRUPTED),
    (AttemptEnd(exit_code=-15, stopped_for=Failure(Kind.HOST_OOM, "over")), Kind.HOST_OOM),
    (AttemptEnd(exit_code=1, events=events_of("torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB")), Kind.CUDA_OOM),
    (AttemptEnd(exit_code=1, events=events_of("ModuleNotFoundError: No module named 'llava'")), Kind.USER_ERROR),
    (AttemptEnd(exit_code=-9), Kind.HOST_OOM),
    (AttemptEnd(exit_code=1, events=events_of("  exitcode  : -9 (pid: 4242)")), Kind.HOST_OOM),
    (AttemptEnd(exit_code=3), Kind.UNKNOWN),
])
def test_classify(end, kind):
    failure = classify(end)
    assert (failure.kind if failure else None) is kind


def test_import_error_before_progress_does_not_hide_a_later_oom():
    end = AttemptEnd(exit_code=1, progressed=True, events=events_of(
        "ImportError: flash_attn is not installed, using eager attention",
        "torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 1.00 GiB"))
    assert classify(end).kind is Kind.CUDA_OOM


def test_the_same_error_twice_before_progress_is_a_user_error():
    first = classify(AttemptEnd(exit_code=2, attempt=1))
    assert first.kind is Kind.UNKNOWN
    second = classify(AttemptEnd(exit_code=2, attempt=2), [first])
    assert second.kind is Kind.USER_ERROR
    assert "the same error twice before any progress: exit code 2" == second.evidence
    after_progress = classify(AttemptEnd(exit_code=2, attempt=2, progressed=True), [first])
    assert after_progress.kind is Kind.UNKNOWN


def test_backoff_doubles_to_the_cap_and_a_new_rung_starts_at_once():
    assert [backoff(n, 10, 300) for n in range(7)] == [0, 10, 20, 40, 80, 160, 300]
