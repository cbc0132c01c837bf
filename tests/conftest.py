"""Suite-wide rules: nothing a test starts may outlive it.

Every test runs with a unique GUARDRUN_TEST_TAG in its environment; every process it
starts inherits it (jobs, ranks, orphans alike). After the test, any live process
whose environment still carries the tag is a leak: the test fails, and the leftovers
are killed so they cannot disturb the next test. Nor may the suite touch the user's own
caches: torch extensions are built and found inside the venv (EXTENSIONS_DIR).
"""
from __future__ import annotations

import os
import signal
import sys
import time
import uuid
from pathlib import Path

import pytest

from guardrun.supervisor.watch.proctree import environ_pids

TAG = "GUARDRUN_TEST_TAG"
#: The suite's torch extensions: inside the venv (the Makefile builds DeepSpeed's op there
#: once), never the user's ~/.cache/torch_extensions, which every venv and job of the user
#: shares. Set for the whole session, so every guardrun, job and rank a test starts inherits it.
EXTENSIONS_DIR = Path(sys.prefix) / "torch_extensions"
os.environ["TORCH_EXTENSIONS_DIR"] = str(EXTENSIONS_DIR)


def tagged_pids(tag: str) -> list[int]:
    """Live processes carrying the test's tag (a zombie's environ reads empty)."""
    return sorted(environ_pids({f"{TAG}={tag}".encode()}))


def wait_until(predicate, timeout: float, interval: float = 0.02, what: str = "condition"):
    """Poll `predicate` until it returns a truthy value; fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


@pytest.fixture(autouse=True)
def no_leftover_processes(monkeypatch):
    tag = uuid.uuid4().hex
    monkeypatch.setenv(TAG, tag)
    yield tag
    try:
        wait_until(lambda: not tagged_pids(tag), timeout=10, what="the test's processes to exit")
    except AssertionError:
        left = tagged_pids(tag)
        for pid in left:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        pytest.fail(f"processes left behind by the test: {left}")


#: The prefix of the cgroups the suite's real cgroup v2 tests make themselves (in the
#: cgroup2 mount, /sys/fs/cgroup/unified on a hybrid host): this session's pid in it, so a
#: suite running beside this one is not counted.
V2_TEST_PREFIX = f"guardrun-test-{os.getpid()}-"


def _job_cgroups(state_root: Path) -> list[Path]:
    """The job cgroups (v1 or v2) of the jobs under a state root that exist now (issue 17):
    where the job's state dir recorded it, else where a v1 one is made."""
    from guardrun.supervisor.watch import cgroupv1
    found = []
    for job in (state_root.iterdir() if state_root.is_dir() else ()):
        try:
            path = cgroupv1.JobCgroup.path_for(job.name, job)
        except cgroupv1.CgroupError:
            continue  # no record and no v1 hierarchy
        if path.is_dir():
            found.append(path)
    return found


def _v2_test_cgroups() -> list[Path]:
    from guardrun.supervisor.watch import cgroupv2
    root = cgroupv2.find_root()
    if root is None:
        return []
    try:
        base = cgroupv2.base_dir(root)
    except cgroupv2.CgroupError:
        return []
    return sorted(base.glob(V2_TEST_PREFIX + "*"))


@pytest.fixture(scope="session", autouse=True)
def no_leftover_cgroups(tmp_path_factory):
    """No job cgroup of the suite's jobs, and no cgroup v2 a test made, outlives the suite (issue 17)."""
    yield
    base = tmp_path_factory.getbasetemp()
    left = [str(path) for root in (*base.glob("*/state"), *base.glob("*/*/state")) for path in _job_cgroups(root)]
    left += [str(path) for path in _v2_test_cgroups()]
    assert not left, f"cgroups left behind by the suite: {left}"


@pytest.fixture
def state_dir(tmp_path, monkeypatch):
    """A private guardrun state root for the test."""
    root = tmp_path / "state"
    monkeypatch.setenv("GUARDRUN_STATE_DIR", str(root))
    yield root
    from guardrun.supervisor.watch import cgroupv1
    for path in _job_cgroups(root):  # a SIGKILLed supervisor's empty cgroups: as its next run would
        cgroupv1.JobCgroup(path).remove()


REPO = Path(__file__).resolve().parent.parent
