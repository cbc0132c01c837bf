"""The job's state machine, one transition per test (supervisord's naming), on fakes.

No process is started and no real second passes: the launcher is a FakePopen behind
FakeProcesses, memory is ScriptedMemory, time is a FakeClock. Each test checks what a
user sees: the journal's state events, state.json, the exit code, the console's lines.
"""
from __future__ import annotations

import errno
import io
import json
import os
import signal
import sys
from dataclasses import dataclass

import pytest

from guardrun.launcher.gpus import GpuProcess
from guardrun.launcher.units import GIB
from guardrun.supervisor.core.signals import Requests
from guardrun.supervisor.record.console import Console
from guardrun.supervisor.record.journal import Journal
from guardrun.supervisor.record.notify import Notifier, NotifyingConsole
from guardrun.supervisor.run.loop import Supervisor
from guardrun.supervisor.run.snapshot import JobSnapshot

sys.path.insert(0, os.path.dirname(__file__) + "/..")
from fakes import (FAKE_PID, FakeClock, FakeGpuSource, FakeProcesses, FakeSystemd, Launch,  # noqa: E402
                   ScriptedMemory)
from recipes_util import make_recipe  # noqa: E402

RECIPE = """
launcher: python
script: train.py
containment: off
monitor: {interval: 1s}
stop_grace: 10s
"""
#: host_oom halves the micro-batch (the default ladder's first answer to it changes nothing here).
HALVES = "batch: {per_device: 8}\nlimits: {host_memory: 4GiB}\nladder:\n  - {on: [host_oom], batch: halve}\n"
HOST = 64 * GIB
CALM = (1 * GIB, 1 * GIB, 32 * GIB)      # tree fast, tree PSS, MemAvailable
OVER = (6 * GIB, 6 * GIB, 32 * GIB)      # past `limits.host_memory: 4GiB`


@dataclass
class Run:
    code: int
    console: str
    events: list[dict]
    state: dict
    processes: FakeProcesses

    @property
    def states(self) -> list[str]:
        """The journal's state changes, in order (the job starts in `starting`)."""
        return [e["state"] for e in self.events if e["event"] == "guardrun.state.changed"]

    def names(self) -> list[str]:
        return [e["event"].removeprefix("guardrun.") for e in self.events]


def supervise(tmp_path, *launches: Launch, extra: str = "", restarts: int = 3, backoff: str = "0s, 0s",
              readings=(CALM,), clock=None, requests=None, gpus=None, console=None, listen=None) -> Run:
    clock = clock or FakeClock()
    recipe = make_recipe(tmp_path, RECIPE + extra + f"restarts: {{max: {restarts}, backoff: [{backoff}]}}\n")
    processes = FakeProcesses(clock, *launches)
    out = io.StringIO()
    journal = Journal(recipe.name)
    supervisor = Supervisor(recipe, journal, console or Console(out, tty=False, plain_every=0), clock,
                            memory=ScriptedMemory(total=HOST, readings=list(readings)), gpus=gpus,
                            requests=requests or Requests(), processes=processes)
    if listen is not None:
        supervisor.listen(listen)
    code = supervisor.run()
    journal.close()
    events = [json.loads(line) for line in (journal.dir / "events.jsonl").read_text().splitlines()]
    state = json.loads((journal.dir / "state.json").read_text())
    return Run(code, out.getvalue(), events, state, processes)


def test_starting_to_running_on_spawn(tmp_path, state_dir):
    run = supervise(tmp_path, Launch(runs_for=3.0))
    names = run.names()
    assert run.states[0] == "running"
    # running is entered once the launcher is spawned, never before
    assert names.index("attempt.spawned") < names.index("state.changed")
    assert run.state["launcher_pid"] == FAKE_PID  # the next run's leftovers check reads it


def test_running_to_finished_on_exit_0(tmp_path, state_dir):
    run = supervise(tmp_path, Launch(output="{'loss': 0.5, 'epoch': 1.0}\n", runs_for=3.0))
    assert run.code == 0
    assert run.states == ["running", "finished"]
    assert run.state["state"] == "finished" and run.state["last_kind"] == "success"
    assert run.state["attempt"] == 1 and run.state["resume_from"] is None  # known: from the start
    assert "attempt 1 ended: success" in run.console and "the job finished" in run.console
    assert run.processes.spawned[0].signals == []  # it ended by itself: nothing was stopped


def test_running_to_stopping_to_backoff_on_host_oom(tmp_path, state_dir):
    run = supervise(tmp_path, Launch(runs_for=None), Launch(runs_for=2.0), extra=HALVES,
                    readings=[OVER, CALM])
    assert run.code == 0
    assert run.states == ["running", "stopping", "backoff", "starting", "running", "finished"]
    [breached] = [e for e in run.events if e["event"] == "guardrun.limit.breached"]
    assert breached["kind"] == "host_oom"
    assert "stopping attempt 1 (SIGTERM, then SIGKILL after 10s)" in run.console
    assert "attempt 1 ended: host_oom" in run.console
    assert "attempt 2: rung 1, 1 rank(s), micro-batch 4" in run.console
    assert run.processes.spawned[0].signals == [signal.SIGTERM]  # it exited on SIGTERM: no SIGKILL


def test_stopping_to_backoff_after_sigkill_when_sigterm_is_ignored(tmp_path, state_dir):
    clock = FakeClock()
    run = supervise(tmp_path, Launch(runs_for=None, on_term=None), Launch(runs_for=2.0), extra=HALVES,
                    readings=[OVER, CALM], clock=clock)
    assert run.states[:3] == ["running", "stopping", "backoff"]
    first = run.processes.spawned[0]
    assert first.signals == [signal.SIGTERM, signal.SIGKILL] and first.returncode == -signal.SIGKILL
    [stopped] = [e for e in run.events if e["event"] == "guardrun.attempt.stopped" and e["attempt"] == 1]
    assert stopped["killed"] == [FAKE_PID] and stopped["took"] >= 10.0  # the whole grace, on the fake clock


def test_stopping_to_finished_when_it_hung_after_reaching_its_target(tmp_path, state_dir):
    run = supervise(tmp_path, Launch(output="step 30/30\n", runs_for=None), extra="limits: {hang_after: 30s}\n")
    assert run.code == 0
    assert run.states == ["running", "stopping", "finished"]  # a success: not relaunched
    assert ("warning: the job reached its target (step 30/30), then hung in teardown (no output and no "
            "checkpoint activity for 30s (hang_after 30s)) and was stopped: not relaunched") in run.console
    assert len(run.processes.spawned) == 1


def test_backoff_to_gave_up_when_no_lighter_rung_is_left(tmp_path, state_dir):
    run = supervise(tmp_path, Launch(runs_for=None), extra="limits: {host_memory: 4GiB}\n",
                    readings=[OVER])
    assert run.code == 1
    assert run.states == ["running", "stopping", "backoff", "gave_up"]
    assert run.state["state"] == "gave_up" and run.state["gave_up"].startswith("no rung left")
    assert "giving up: " in run.console


#: A transient failure after some training: the same rung again, after the backoff.
CRASH = Launch(output="{'loss': 0.9, 'epoch': 0.1}\nRuntimeError: NCCL error: unhandled system error\n",
               code=1, runs_for=2.0)


def test_running_to_gave_up_when_restarts_used_up(tmp_path, state_dir):
    run = supervise(tmp_path, CRASH, CRASH, restarts=1)
    assert run.code == 1
    assert run.states == ["running", "backoff", "starting", "running", "gave_up"]
    assert run.state["gave_up"] == "restarts used up (1)"
    assert "giving up: restarts used up (1)" in run.console
    assert len(run.processes.spawned) == 2


def test_stopping_to_interrupted_on_sigterm(tmp_path, state_dir):
    clock, requests = FakeClock(), Requests()
    clock.at(5.0, lambda: requests.ask_stop("SIGTERM"))
    run = supervise(tmp_path, Launch(runs_for=None), clock=clock, requests=requests)
    assert run.code == 130
    assert run.states == ["running", "stopping", "interrupted"]
    assert run.state["state"] == "interrupted"
    assert "stopping attempt 1 (SIGTERM, then SIGKILL after 10s)" in run.console
    assert "stopped on request" in run.console
    assert run.processes.spawned[0].signals == [signal.SIGTERM]


def test_stopping_to_interrupted_kills_at_once_on_a_second_interrupt(tmp_path, state_dir):
    clock, requests = FakeClock(), Requests()
    clock.at(5.0, lambda: (requests.ask_stop("SIGINT"), requests.ask_stop("SIGINT")))
    run = supervise(tmp_path, Launch(runs_for=None, on_term=None), clock=clock, requests=requests)
    assert run.code == 130 and run.states == ["running", "stopping", "interrupted"]
    assert "killing attempt 1" in run.console
    assert run.processes.spawned[0].signals == [signal.SIGKILL]  # no grace, no SIGTERM


def test_backoff_to_interrupted_on_a_stop_during_the_wait(tmp_path, state_dir):
    clock, requests = FakeClock(), Requests()
    clock.at(4.0, lambda: requests.ask_stop("SIGTERM"))  # 2 s into the 5 s backoff
    run = supervise(tmp_path, CRASH, backoff="5s, 5s", clock=clock, requests=requests)
    assert run.code == 130 and run.states == ["running", "backoff", "interrupted"]
    assert "same configuration again: waiting 5s before the next attempt" in run.console
    assert "interrupted during backoff" in run.console
    assert len(run.processes.spawned) == 1


def test_starting_to_interrupted_on_a_stop_before_the_first_attempt(tmp_path, state_dir):
    requests = Requests()
    requests.ask_stop("SIGTERM")
    run = supervise(tmp_path, requests=requests)
    assert run.code == 130 and run.states == ["interrupted"]
    assert "stopped on request before the first attempt" in run.console
    assert run.processes.argvs == []  # nothing was spawned
    # state.json leaves out what is not known yet (no attempt, no launcher), as it always did
    assert run.state["state"] == "interrupted" and run.state["job"] == "job"
    assert not {"attempt", "launcher_pid", "step", "gave_up", "last_kind"} & set(run.state)


def test_starting_to_gave_up_when_the_launcher_cannot_be_spawned(tmp_path, state_dir):
    run = supervise(tmp_path, Launch(fails=OSError(errno.ENOEXEC, "Exec format error")))
    assert run.code == 2
    assert run.states == ["gave_up"]  # never running: nothing was started
    assert "attempt.spawn_failed" in run.names()
    assert "giving up: " in run.console


# -- systemd's READY=1 and STOPPING=1 follow the states ----------------------------------------------

def test_ready_only_once_the_first_attempt_runs_not_while_waiting_for_gpus(tmp_path, state_dir, monkeypatch):
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    source = FakeGpuSource(count=1, procs={0: [GpuProcess(999999, 20 * GIB)]})
    clock = FakeClock()
    clock.at(6.0, source.procs.clear)  # the other job frees the GPU
    with FakeSystemd(tmp_path / "notify.sock") as systemd:
        notifier = Notifier(systemd.path)
        console = NotifyingConsole(notifier, stream=io.StringIO(), tty=False, plain_every=0)
        run = supervise(tmp_path, Launch(runs_for=3.0), extra="gpus: 1\nwait_for_gpus: 1m\n", clock=clock,
                        gpus=source, console=console, listen=notifier.moved)
        sent = systemd.received()
    assert run.code == 0
    waiting = next(i for i, m in enumerate(sent) if m.startswith("STATUS=waiting for 1 free GPU(s)"))
    attempt = next(i for i, m in enumerate(sent) if m.startswith("STATUS=attempt 1: rung 0"))
    assert sent.count("READY=1") == 1 and sent.index("READY=1") > max(waiting, attempt)
    assert sent[-1] == "STOPPING=1\nSTATUS=guardrun exits 0: finished"


def test_a_fact_state_json_does_not_have_is_refused():
    snapshot = JobSnapshot(job="j", pid=1, recipe="r.yaml", started="now")
    snapshot.update(step=3, loss=None)
    assert snapshot.as_json() == {"job": "j", "pid": 1, "recipe": "r.yaml", "started": "now",
                                  "state": "starting", "step": 3, "loss": None}
    with pytest.raises(TypeError, match="no field 'stpe'"):
        snapshot.update(stpe=4)
