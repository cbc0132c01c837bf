"""Never past the target (issue 13 §1, §7): the pure decisions, with plain values and small files."""
from __future__ import annotations

import io
import json
from pathlib import Path

import pytest

from recipes_util import make_recipe

from guardrun.launcher.checkpoints import Saved, inspect
from guardrun.launcher.failures import Failure, Kind
from guardrun.launcher.hostfit import limits_problem
from guardrun.launcher.resume import Target, declared_epochs, declared_max_steps, reached
from guardrun.supervisor.record.console import Console
from guardrun.supervisor.run.loop import _exit, _no_rung, _teardown_warning
from guardrun.supervisor.diagnose.output import OutputReader
from guardrun.supervisor.run.policy import AttemptEnd, classify, target_of
from guardrun.supervisor.run.target import LastRun, already_finished, last_run

GIB = 1 << 30


# -- an attempt that trained to its end ---------------------------------------------------------
@pytest.mark.parametrize("exit_code", [1, -6, 134])  # torchrun's ChildFailedError, a gloo abort, bash's 128+6
def test_a_teardown_crash_after_the_target_is_finished(exit_code):
    end = AttemptEnd(exit_code=exit_code, progressed=True, last_step=30, reached_target="step 30/30")
    assert classify(end) is None


def test_without_the_target_the_same_crash_is_relaunched():
    assert classify(AttemptEnd(exit_code=1, progressed=True, last_step=29)).kind is Kind.UNKNOWN


def test_a_save_cut_off_after_the_last_step_is_no_end():
    end = AttemptEnd(exit_code=-9, progressed=True, last_step=30, reached_target="step 30/30",
                     incomplete_save="checkpoint-30 is incomplete (no trainer_state.json)")
    assert classify(end).kind is Kind.SAVE_FAILED


def test_a_stop_or_guardrun_limit_still_wins_over_the_target():
    assert classify(AttemptEnd(exit_code=-15, interrupted=True, reached_target="step 30/30")).kind \
        is Kind.INTERRUPTED
    oom = Failure(Kind.HOST_OOM, "job memory 9 GiB (PSS) reached the limit 8 GiB")
    assert classify(AttemptEnd(exit_code=-15, stopped_for=oom, reached_target="step 30/30")).kind \
        is Kind.HOST_OOM  # the next attempt finds checkpoint-30 at the target (supervisor.resume)


def test_a_hang_after_the_target_is_a_teardown_hang():
    hang = Failure(Kind.HANG, "no progress for 30m")
    end = AttemptEnd(exit_code=-15, stopped_for=hang, progressed=True, reached_target="step 30/30")
    assert classify(end) is None
    assert _teardown_warning(end) == ("warning: the job reached its target (step 30/30), then hung in "
                                      "teardown (no progress for 30m) and was stopped: not relaunched")
    assert classify(AttemptEnd(exit_code=-15, stopped_for=hang, progressed=True)).kind is Kind.HANG


def test_the_teardown_warning_names_the_exit():
    end = AttemptEnd(exit_code=1, reached_target="step 30/30")
    assert _teardown_warning(end) == ("warning: the job reached its target (step 30/30), then exited with "
                                      "code 1 in teardown: not relaunched")


@pytest.mark.parametrize("progress,saved,expected", [
    ((30, 30, False), (None, None), "step 30/30"),     # a plain script's `step 30/30`
    ((29, 30, False), (None, None), ""),
    ((10, 10, True), (None, None), ""),                # Lightning's `Epoch 0: 10/10`: one epoch of three
    ((None, None, False), (None, None), ""),
    ((30, 30, False), (25, 30), ""),                   # the trainer's own record wins: it saved 25 last
    ((12, 30, False), (30, 30), "step 30/30"),         # a bar left behind, the final checkpoint says 30
    ((None, None, False), (31, 30), "step 31/30"),
    ((30, 30, False), (30, 0), "step 30/30"),          # no usable max_steps: the output decides
])
def test_target_of(progress, saved, expected):
    assert target_of(*progress, *saved) == expected


def test_an_epochs_full_bar_is_no_end_the_runs_is(tmp_path):
    """Lightning's bar ends every epoch (tests/data/outputs/real_lightning_ok.txt); HF's ends the run."""
    lightning = _progress(tmp_path, "Epoch 0: 100%|██████████| 8/8 [00:00<00:00, 355.60it/s, v_num=0, "
                                    "train_loss=0.381]\n".encode())
    assert target_of(lightning.step, lightning.total, lightning.per_epoch, None, None) == ""
    hf = _progress(tmp_path, b" 100%|##########| 30/30 [00:09<00:00,  3.1it/s]\n")
    assert (hf.step, hf.total, hf.per_epoch) == (30, 30, False)
    assert target_of(hf.step, hf.total, hf.per_epoch, None, None) == "step 30/30"


def _progress(tmp_path: Path, data: bytes):
    reader = OutputReader(io.BytesIO(data), tmp_path / "output.log", Console(io.StringIO(), quiet=True),
                          "[1] ").start()
    assert reader.join(5)
    return reader.progress()


# -- a checkpoint at the end of training ---------------------------------------------------------
@pytest.mark.parametrize("saved,recipe_max,expected", [
    (Saved(global_step=30, max_steps=30), None, Target(30, 30)),
    (Saved(global_step=31, max_steps=30), None, Target(31, 30)),
    (Saved(global_step=25, max_steps=30), None, None),
    (Saved(global_step=30, max_steps=30), 60, None),    # the recipe raised max_steps: train on
    (Saved(global_step=30, max_steps=None), 30, Target(30, 30)),
    (Saved(global_step=None, max_steps=30), None, None),
    (Saved(global_step=30, max_steps=-1), None, None),
])
def test_reached(saved, recipe_max, expected):
    assert reached(saved, recipe_max) == expected


@pytest.mark.parametrize("recipe_epochs,expected", [(None, Target(30, 30)), (3.0, Target(30, 30)),
                                                    (6.0, None)])   # more epochs: train on
def test_reached_against_the_recipes_epochs(recipe_epochs, expected):
    assert reached(Saved(global_step=30, max_steps=30, num_train_epochs=3), None, recipe_epochs) == expected
    assert reached(Saved(global_step=30, max_steps=30, num_train_epochs=3), 30, 6.0) == Target(30, 30)


def test_declared_epochs():
    assert declared_epochs((("num_train_epochs", 2.5),), False) == 2.5
    assert declared_epochs(("--num_train_epochs", "3"), True) == 3.0
    assert declared_epochs((("max_steps", 3),), False) is None


def test_target_reads_like_the_trainer():
    assert str(Target(30, 30)) == "step 30/30"


@pytest.mark.parametrize("args,is_list,expected", [
    ((("output_dir", "o"), ("max_steps", 30)), False, 30),
    ((("--max_steps", 12),), False, 12),
    ((("num_train_epochs", 3),), False, None),
    ((("max_steps", -1),), False, None),       # HF's "from the epochs"
    (("--max_steps", "40", "--x"), True, 40),
    (("--max_steps=41",), True, 41),
    (("max_steps=42",), True, 42),             # LLaMA-Factory's key=value
    (("--max_steps",), True, None),
    (("--max_steps", "many"), True, None),
])
def test_declared_max_steps(args, is_list, expected):
    assert declared_max_steps(args, is_list) == expected


def hf_checkpoint(out: Path, step: int, max_steps: int, state: str | None = None) -> Path:
    """A valid HF checkpoint folder: a whole (empty) safetensors file and trainer_state.json."""
    path = out / f"checkpoint-{step}"
    path.mkdir(parents=True)
    (path / "adapter_model.safetensors").write_bytes(len(b"{}").to_bytes(8, "little") + b"{}")
    (path / "trainer_state.json").write_text(
        state if state is not None else json.dumps({"global_step": step, "max_steps": max_steps}))
    return path


def test_inspect_reads_the_trainers_record(tmp_path):
    saved = inspect(hf_checkpoint(tmp_path, 30, 30, state='{"global_step": 30, "max_steps": 30, "num_train_epochs": 2}'))
    assert (saved.global_step, saved.max_steps, saved.num_train_epochs) == (30, 30, 2)
    for text in ('{"global_step": "30", "max_steps": true}', "[30]"):
        odd = inspect(hf_checkpoint(tmp_path / text[:2], 30, 30, state=text))
        assert (odd.global_step, odd.max_steps) == (None, None)


# -- a rerun of a finished recipe ------------------------------------------------------------------
def journal(directory: Path, *events: dict) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "events.jsonl").write_text("".join(json.dumps(e) + "\n" for e in events))
    return directory


def ev(name: str, **fields) -> dict:
    return {"event": f"guardrun.{name}", **fields}


CKPT_RECIPE = """
    launcher: python
    script: train.py
    args: {max_steps: 30}
    checkpoints: {dir: ./out}
    """


def test_last_run_counts_runs_and_keeps_the_last_checkpoint(tmp_path):
    path = journal(tmp_path / "j", ev("run.started", digest="a"), ev("run.gave_up"),
                   ev("run.started", digest="b"), ev("checkpoint.saved", path="/o/checkpoint-20", step=20),
                   ev("attempt.ended", kind="success", step=30), ev("run.finished"))
    assert last_run(path) == LastRun(2, True, "b", "/o/checkpoint-20", 30)
    assert last_run(journal(tmp_path / "k")) is None
    damaged = journal(tmp_path / "d", ev("run.started", digest="b"), ev("run.finished"))
    with open(damaged / "events.jsonl", "ab") as log:
        log.write(b"\xff not an event\n" + json.dumps(ev("backoff")).encode() + b"\n")
    assert last_run(damaged) is None     # what was lost may be the run's end


def test_already_finished_from_the_trainer_state(tmp_path):
    recipe = make_recipe(tmp_path, CKPT_RECIPE)
    assert already_finished(recipe, "d", None) == ""           # no checkpoint yet
    hf_checkpoint(tmp_path / "out", 25, 30)
    assert already_finished(recipe, "d", None) == ""
    hf_checkpoint(tmp_path / "out", 30, 30)
    assert already_finished(recipe, "d", LastRun(3, True, "d")) == \
        "already finished at step 30 (run 3); use --fresh to start over"
    said = already_finished(recipe, "d", LastRun(3, False, "d"))
    assert said.startswith(f"already finished: {tmp_path / 'out' / 'checkpoint-30'} is at step 30/30")
    assert said.endswith("use --fresh to start over")


def test_a_raised_max_steps_trains_on(tmp_path):
    recipe = make_recipe(tmp_path, CKPT_RECIPE.replace("max_steps: 30", "max_steps: 60"))
    hf_checkpoint(tmp_path / "out", 30, 30)
    assert already_finished(recipe, "new", LastRun(1, True, "old", str(tmp_path / "out" / "checkpoint-30"))) == ""


def test_already_finished_from_the_journal_alone(tmp_path):
    """A checkpoint without trainer_state.json (a recipe pattern): the journal's finished run decides."""
    recipe = make_recipe(tmp_path, CKPT_RECIPE.replace("{dir: ./out}", "{dir: ./out, pattern: 'step(\\d+)\\.pt$'}"))
    (tmp_path / "out").mkdir()
    newest = tmp_path / "out" / "step10.pt"
    newest.write_bytes(b"not a zip, a legacy pickle")
    last = LastRun(2, True, "d", str(newest), 10)
    assert already_finished(recipe, "d", last) == "already finished at step 10 (run 2); use --fresh to start over"
    assert already_finished(recipe, "changed", last) == ""     # a changed recipe starts again
    assert already_finished(recipe, "d", LastRun(2, False, "d", str(newest), 10)) == ""


def test_no_checkpoints_section_is_never_already_finished(tmp_path):
    recipe = make_recipe(tmp_path, "launcher: python\nscript: train.py\n")
    assert already_finished(recipe, "d", LastRun(1, True, "d")) == ""


def test_zero_attempts_says_fresh_forgets_the_history():
    said = _no_rung("no rung left in the ladder for host_oom", remembered=3, attempts=0)
    assert said.startswith("no rung left in the ladder for host_oom, from the 3 failure(s) that earlier runs")
    assert "`guardrun run --fresh` forgets them" in said
    assert _no_rung("no rung left", remembered=3, attempts=1) == "no rung left"
    assert _no_rung("no rung left", remembered=0, attempts=0) == "no rung left"


def test_exit_status_words():
    assert (_exit(1), _exit(-6), _exit(None)) == ("code 1", "signal 6 (SIGABRT)", "code None")


# -- limits this machine cannot meet --------------------------------------------------------------
@pytest.mark.parametrize("limits,key,line", [
    ("{min_available: 20GiB}", "limits.min_available", 4),
    ("{min_available: 100%}", "limits.min_available", 4),
    ("\n  host_memory: 40GiB", "limits.host_memory", 5),
])
def test_limits_above_the_machine_are_a_recipe_error(tmp_path, limits, key, line):
    recipe = make_recipe(tmp_path, f"launcher: python\nscript: train.py\n\nlimits: {limits}\n")
    said = limits_problem(recipe, 16 * GIB)
    assert said.startswith(f"{tmp_path / 'job.yaml'}:{line}: {key}: "), said
    assert "16.0 GiB of memory (MemTotal)" in said


@pytest.mark.parametrize("limits", ["{min_available: 2GiB, host_memory: 16GiB}", "{host_memory: 90%}",
                                    "{min_available: 10%}"])
def test_limits_this_machine_can_meet(tmp_path, limits):
    recipe = make_recipe(tmp_path, f"launcher: python\nscript: train.py\nlimits: {limits}\n")
    assert limits_problem(recipe, 16 * GIB) == ""
