"""Every transition goes through one checked function (supervisord's shape)."""
import pytest

from guardrun.supervisor.core.states import ALLOWED, TERMINAL, State, TransitionError, check_transition


@pytest.mark.parametrize("source,target", [
    (State.STARTING, State.RUNNING),
    (State.RUNNING, State.BACKOFF),
    (State.BACKOFF, State.STARTING),
    (State.RUNNING, State.FINISHED),
    (State.STARTING, State.FINISHED),  # nothing left to train: the checkpoint is at the target
    (State.BACKOFF, State.GAVE_UP),
    (State.RUNNING, State.INTERRUPTED),
    (State.RUNNING, State.STOPPING),     # a limit, a hang, a stop request: the launcher still runs
    (State.STOPPING, State.BACKOFF),
    (State.STOPPING, State.INTERRUPTED),
    (State.STOPPING, State.FINISHED),    # it reached its target, then hung in teardown
])
def test_allowed(source, target):
    assert check_transition(source, target) is target


@pytest.mark.parametrize("source,target", [
    (State.FINISHED, State.RUNNING),
    (State.GAVE_UP, State.STARTING),
    (State.BACKOFF, State.FINISHED),
    (State.BACKOFF, State.RUNNING),
    (State.STARTING, State.STOPPING),    # nothing runs yet to stop
    (State.STOPPING, State.RUNNING),
])
def test_illegal(source, target):
    with pytest.raises(TransitionError, match=f"{source} -> {target}"):
        check_transition(source, target)


def test_a_terminal_state_has_no_way_out_and_every_other_state_reaches_one():
    assert all(not ALLOWED[state] for state in TERMINAL)
    assert all(ALLOWED[state] & TERMINAL for state in set(State) - TERMINAL)
