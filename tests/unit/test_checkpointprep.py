"""The checkpoint preparation between attempts, on fakes: its events name the attempt they
prepare, and its helper (the universal conversion) runs through the process seam,
stoppable, with its signals in the journal.
"""
from __future__ import annotations

import io
import json
import os
import signal
import sys

import pytest

from guardrun.supervisor.core import events as names
from guardrun.supervisor.core.context import Context
from guardrun.supervisor.core.signals import Requests
from guardrun.supervisor.record.console import Console
from guardrun.supervisor.record.journal import Journal
from guardrun.supervisor.run.checkpointprep import TOOL_GRACE, ResumeError, Tools, convert
from guardrun.supervisor.run.loop import Supervisor

sys.path.insert(0, os.path.dirname(__file__) + "/..")
from fakes import FakeClock, FakeProcesses, Launch, ScriptedMemory  # noqa: E402
from recipes_util import make_recipe  # noqa: E402

RECIPE = """
launcher: python
script: train.py
containment: off
checkpoints: {dir: ./out}
monitor: {interval: 1s}
restarts: {max: 1, backoff: [0s, 0s]}
"""


def save(folder, step: int, complete: bool = True) -> None:
    """An HF checkpoint-N folder; an incomplete one has no weights (a save cut off)."""
    folder.mkdir(parents=True)
    (folder / "trainer_state.json").write_text(json.dumps({"global_step": step, "max_steps": 10}))
    if complete:
        (folder / "model.safetensors").write_bytes((2).to_bytes(8, "little") + b"{}")


def test_a_checkpoint_set_aside_before_attempt_one_is_journaled_with_attempt_one(tmp_path, state_dir):
    recipe = make_recipe(tmp_path, RECIPE)
    save(tmp_path / "out" / "checkpoint-2", 2)
    save(tmp_path / "out" / "checkpoint-3", 3, complete=False)
    clock = FakeClock()
    out = io.StringIO()
    journal = Journal(recipe.name)
    code = Supervisor(recipe, journal, Console(out, tty=False, plain_every=0), clock,
                      memory=ScriptedMemory(total=64 << 30, readings=[(1 << 30, 1 << 30, 32 << 30)]),
                      gpus=None, requests=Requests(),
                      processes=FakeProcesses(clock, Launch(output="step 10/10\n"))).run()
    journal.close()
    assert code == 0, out.getvalue()
    assert "set aside checkpoint-3" in out.getvalue()
    recorded = [json.loads(line) for line in (journal.dir / "events.jsonl").read_text().splitlines()]
    aside = [e for e in recorded if names.name_of(e) == names.CHECKPOINT_QUARANTINED]
    assert [(e["attempt"], e["step"]) for e in aside] == [(1, 3)]
    assert not (tmp_path / "out" / "checkpoint-3").exists()


def test_a_conversion_stopped_on_request_is_stopped_through_the_seam_and_journaled(tmp_path):
    recipe = make_recipe(tmp_path, RECIPE)
    tag = tmp_path / "out" / "checkpoint-2" / "global_step2"
    tag.mkdir(parents=True)
    clock, requests, emitted, said = FakeClock(), Requests(), [], []
    ctx = Context(clock, lambda name, **fields: emitted.append((name, fields)), said.append,
                  requests).for_attempt(2)
    processes = FakeProcesses(clock, Launch(runs_for=None))  # a conversion that would run for ever
    requests.stop = True
    with pytest.raises(ResumeError, match=r"the universal conversion of .* failed \(exit -15\)"):
        convert(recipe, tag, ctx, Tools(tmp_path, processes))
    assert processes.argvs[0][1:3] == ["-m", "deepspeed.checkpoint.ds_to_universal"]
    assert processes.spawned[0].signals == [signal.SIGTERM]
    assert processes.stops[0].took < TOOL_GRACE
    assert (tmp_path / "universal-conversion.log").exists()
    assert [(name, fields["attempt"]) for name, fields in emitted] == [
        (names.PROC_TERM_SENT, 2), (names.CHECKPOINT_CONVERTED, 2)]
    assert said == [f"converting {tag} to a universal checkpoint (log: {tmp_path / 'universal-conversion.log'})"]


def test_a_conversion_that_finished_is_only_reaped(tmp_path):
    recipe = make_recipe(tmp_path, RECIPE)
    tag = tmp_path / "global_step2"
    tag.mkdir()
    clock, emitted = FakeClock(), []
    ctx = Context(clock, lambda name, **fields: emitted.append((name, fields)), lambda line: None)
    processes = FakeProcesses(clock, Launch(runs_for=1.0))
    assert convert(recipe, tag, ctx, Tools(tmp_path, processes)) == tmp_path / "global_step2_universal"
    assert processes.spawned[0].signals == [] and processes.stops[0].killed == ()
    assert emitted == [(names.CHECKPOINT_CONVERTED, {"tag": str(tag), "to": str(tmp_path / "global_step2_universal"),
                                                     "exit_code": 0, "took": pytest.approx(1.0, abs=0.3)})]
