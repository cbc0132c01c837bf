"""Every transition goes through one checked function (supervisord's shape)."""
import pytest

from guardrun.supervisor.core.states import State, TransitionError, check_transition


@pytest.mark.parametrize("source,target", [
    (State.STARTING, State.RUNNING),
    (State.RUNNING, State.BACKOFF),
    (State.BACKOFF, State.STARTING),
    (State.RUNNING, State.FINISHED),
    (State.STARTING, State.FINISHED),  # nothing left to train: the checkpoint is at the target
    (State.BACKOFF, State.GAVE_UP),
    (State.RUNNING, State.INTERRUPTED),
])
def test_allowed(source, target):
    assert check_transition(source, target) is target


@pytest.mark.parametrize("source,target", [
    (State.FINISHED, State.RUNNING),
    (State.GAVE_UP, State.STARTING),
    (State.BACKOFF, State.FINISHED),
    (State.BACKOFF, State.RUNNING),
])
def test_illegal(source, target):
    with pytest.raises(TransitionError, match=f"{source} -> {target}"):
        check_transition(source, target)
