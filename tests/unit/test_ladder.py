"""The ladder: which rung after which failures, and the global batch kept on the way."""
from __future__ import annotations

import sys

import pytest
from hypothesis import given, settings, strategies as st, HealthCheck

from guardrun.launcher.failures import Failure, Kind
from guardrun.launcher.ladder import decide, default_ladder, effective_ladder, walk
from guardrun.launcher.trainer import trainer

sys.path.insert(0, __import__("os").path.dirname(__file__) + "/..")
from recipes_util import make_recipe  # noqa: E402

BASE = """
launcher: torchrun
script: train.py
gpus: 8
batch: {per_device: 16, grad_accum: 1}
lr: {value: 2.0e-4}
"""
LADDER = BASE + """
ladder:
  - {on: [host_oom], gpus: 6}
  - {on: [cuda_oom], batch: halve}
  - {on: [cuda_oom, host_oom], zero3_offload: true, args: {zero_config: zero3_offload.json}}
  - {on: [nan_loss], lr: halve}
"""


def fail(*kinds):
    return [Failure(Kind(k)) for k in kinds]


def test_host_oom_drops_ranks_and_keeps_the_global_batch(tmp_path):
    recipe = make_recipe(tmp_path, LADDER)
    plan = decide(recipe, fail("host_oom")).plan
    assert (plan.rungs, plan.ranks, plan.per_device) == ((1,), 6, 16)
    # 16 × 1 × 8 = 128 cannot be split over 6 ranks of 16: nearest accumulation is 1 (96)
    assert (plan.grad_accum, plan.global_batch, plan.target_global_batch) == (1, 96, 128)
    assert "global batch 128 cannot be kept with 6 ranks" in plan.notes[0]


def test_cuda_oom_skips_rungs_for_other_kinds_and_leaves_them_available(tmp_path):
    recipe = make_recipe(tmp_path, LADDER)
    plan = decide(recipe, fail("cuda_oom")).plan
    assert (plan.rungs, plan.ranks, plan.per_device, plan.grad_accum) == ((2,), 8, 8, 2)
    plan = decide(recipe, fail("cuda_oom", "host_oom")).plan
    assert plan.rungs == (2, 1)  # host_oom still finds its own first rung
    assert (plan.ranks, plan.per_device, plan.zero3_offload) == (6, 8, None)
    plan = decide(recipe, fail("cuda_oom", "host_oom", "cuda_oom")).plan
    assert plan.rungs == (2, 1, 3) and plan.zero3_offload is True


def test_exhausted_ladder_gives_up_for_oom_but_restarts_for_transient(tmp_path):
    recipe = make_recipe(tmp_path, LADDER)
    decision = decide(recipe, fail("host_oom", "host_oom", "host_oom"))
    assert decision.plan is None
    assert decision.give_up == "no rung left in the ladder for host_oom"
    decision = decide(recipe, fail("host_oom", "transient", "unknown"))
    assert decision.plan.rungs == (1,)


def test_nan_halves_the_learning_rate(tmp_path):
    plan = decide(make_recipe(tmp_path, LADDER), fail("nan_loss")).plan
    assert plan.lr == pytest.approx(1.0e-4)


def test_the_same_history_always_gives_the_same_plan(tmp_path):
    recipe = make_recipe(tmp_path, LADDER)
    history = fail("cuda_oom", "host_oom", "transient")
    assert decide(recipe, history) == decide(recipe, list(history))


def test_default_ladder_for_eight_and_two_ranks():
    assert [r.gpus for r in default_ladder(8) if r.gpus] == [6, 4, 2, 1]
    assert [r.gpus for r in default_ladder(2) if r.gpus] == [1]
    assert [r.gpus for r in default_ladder(1) if r.gpus] == []
    cuda = [r for r in default_ladder(4) if Kind.CUDA_OOM in r.on]
    assert cuda[0].batch == "halve" and cuda[1].gradient_checkpointing and cuda[2].zero_stage == 3


def test_default_ladder_without_deepspeed_has_no_rung_that_would_change_nothing():
    plain = default_ladder(4, deepspeed=False)
    deepspeed_keys = ("zero_stage", "zero3_offload", "offload_pin_memory", "gather_16bit_on_save")
    assert not [r for r in plain if any(getattr(r, key) is not None for key in deepspeed_keys)]
    cuda = [r for r in plain if Kind.CUDA_OOM in r.on]
    assert [r.batch for r in cuda] == ["halve", None, "halve"] and cuda[1].gradient_checkpointing
    assert not [r for r in plain if Kind.SAVE_FAILED in r.on]   # same rung again, from the last good one
    assert [(r.gather_16bit_on_save, r.save_only_model) for r in default_ladder(4) if Kind.SAVE_FAILED in r.on] \
        == [(False, None)]


def test_walk_shows_each_rung_on_top_of_the_ones_before(tmp_path):
    plans = walk(make_recipe(tmp_path, LADDER))
    assert [p.rungs for p in plans] == [(), (1,), (1, 2), (1, 2, 3), (1, 2, 3, 4)]
    assert plans[-1].ranks == 6 and plans[-1].per_device == 8 and plans[-1].zero3_offload


def test_gpu_list_keeps_the_original_order(tmp_path):
    recipe = make_recipe(tmp_path, BASE.replace("gpus: 8", "gpus: [3, 1, 7, 5]"))
    plan = decide(recipe, fail("host_oom")).plan
    assert plan.gpu_ids == (3, 1, 7)


@settings(max_examples=200, suppress_health_check=[HealthCheck.function_scoped_fixture], deadline=None)
@given(ranks=st.integers(1, 8), per_device=st.integers(1, 64), accum=st.integers(1, 16),
       steps=st.lists(st.one_of(st.integers(1, 8).map(lambda n: ("gpus", n)),
                                st.just(("batch", "halve")),
                                st.integers(1, 64).map(lambda n: ("batch", n))), max_size=6))
def test_any_rung_sequence_keeps_the_global_batch_when_divisible(tmp_path, ranks, per_device, accum, steps):
    rungs = "\n".join(f"  - {{on: [host_oom], {key}: {value}}}" for key, value in steps)
    body = BASE.replace("gpus: 8", f"gpus: {ranks}").replace(
        "per_device: 16, grad_accum: 1", f"per_device: {per_device}, grad_accum: {accum}")
    recipe = make_recipe(tmp_path, body + ("ladder:\n" + rungs if steps else ""))
    target = per_device * accum * ranks
    for plan in walk(recipe):
        assert plan.per_device * plan.grad_accum * plan.ranks == plan.global_batch
        if target % (plan.per_device * plan.ranks) == 0:
            assert plan.global_batch == target
        else:
            assert plan.notes, "an inexact global batch must be said"


# -- issue 13 §2: HF flags only for HF scripts; a rung that changes nothing is skipped ------------

PLAIN = "launcher: python\nscript: train.py\n"


@pytest.mark.parametrize("body, hf, why", [
    (PLAIN, False, "nothing in the recipe names one"),
    (PLAIN + "trainer: hf\n", True, "declared (trainer: hf)"),
    (PLAIN + "trainer: plain\nargs: {per_device_train_batch_size: 2}\n", False, "declared (trainer: plain)"),
    (PLAIN + "args: {per_device_train_batch_size: 2}\n", True, "--per_device_train_batch_size"),
    (PLAIN + "args: ['--report_to=none', --steps, '3']\n", True, "--report_to"),
    (PLAIN + "args: {output_dir: out, steps: 3}\n", False, "nothing in the recipe names one"),
    (PLAIN + "batch: {per_device: 2}\n", True, "--per_device_train_batch_size"),
    (PLAIN + "batch: {per_device: 2, per_device_arg: --bs, grad_accum_arg: --accum}\n", False, "nothing"),
    (PLAIN + "ladder: [{on: [cuda_oom], gradient_checkpointing: true}]\n", True,
     "ladder[0] sets gradient_checkpointing (--gradient_checkpointing)"),
    ("launcher: command\ncommand: [llamafactory-cli, train, cfg.yaml]\n", True, "llamafactory-cli parses"),
    ("launcher: command\ncommand: [xtuner, train, cfg]\n", False, "nothing in the recipe names one"),
])
def test_whether_a_job_takes_hf_flags(tmp_path, body, hf, why):
    found = trainer(make_recipe(tmp_path, body))
    assert found.hf is hf and why in found.why


def test_the_default_ladder_of_a_plain_script_passes_no_hf_flag(tmp_path):
    plain = make_recipe(tmp_path, PLAIN + "gpus: 4\nbatch: {per_device: 8, per_device_arg: --bs}\n")
    hf_keys = ("gradient_checkpointing", "save_only_model", "dataloader_workers")
    rungs = effective_ladder(plain)
    assert not [r for r in rungs if any(getattr(r, key) is not None for key in hf_keys)]
    # fewer ranks, then halve the micro-batch twice; no `lr:` section, so no lr rungs
    assert [(r.on, r.gpus, r.batch) for r in rungs] == [
        ((Kind.HOST_OOM,), 3, None), ((Kind.HOST_OOM,), 2, None), ((Kind.HOST_OOM,), 1, None),
        ((Kind.CUDA_OOM,), None, "halve"), ((Kind.CUDA_OOM,), None, "halve")]
    hf = default_ladder(4, deepspeed=False)
    assert [key for r in hf for key in hf_keys if getattr(r, key) is not None] == [
        "dataloader_workers", "gradient_checkpointing"]


HF_ONE = PLAIN + "args: {output_dir: out}\nbatch: {per_device: 2}\n"


@pytest.mark.parametrize("body, history, rungs, skipped, give_up", [
    # micro-batch 2 -> 1 (rung 2), gradient checkpointing (3), then halving 1 changes nothing (4)
    (HF_ONE, ["cuda_oom"] * 3, None, None,
     "no rung left that changes anything for cuda_oom: rung 4 (batch halve) relaunches rung 3, which "
     "already failed (the micro-batch is already 1)"),
    (HF_ONE, ["cuda_oom"] * 2, (2, 3), (), ""),
    # TrainingArguments' default is 0 workers: `dataloader_workers: 0` changes nothing
    (HF_ONE, ["host_oom"], None, None,
     "no rung left that changes anything for host_oom: rung 1 (dataloader_workers 0) relaunches the recipe "
     "as written, which already failed (dataloader_num_workers is already 0: TrainingArguments' default)"),
    (HF_ONE.replace("{output_dir: out}", "{output_dir: out, dataloader_num_workers: 4}"), ["host_oom"],
     (1,), (), ""),
    # a tool given no rank count: the gpus rung relaunches the same job
    ("launcher: command\ncommand: [tool]\ngpus: 2\n", ["host_oom"], None, None,
     "no rung left that changes anything for host_oom: rung 1 (gpus 1) relaunches the recipe as written, "
     "which already failed (`launcher: command` without `ranks_env` tells the tool no rank count)"),
    ("launcher: command\ncommand: [tool]\nranks_env: NPROC_PER_NODE\ngpus: 2\n", ["host_oom"], (1,), (), ""),
    # not a degrading kind: a rung that changes nothing is passed over, the same job restarts
    (PLAIN + "batch: {per_device: 1}\nladder: [{on: [unknown], batch: halve}]\n", ["unknown"], (), (1,), ""),
    # a later rung still answers after a skipped one
    (PLAIN + "batch: {per_device: 1, per_device_arg: --bs}\nladder: [{on: [cuda_oom], batch: halve},"
     " {on: [cuda_oom], args: {--small: 1}}]\n", ["cuda_oom"], (2,), (1,), ""),
])
def test_a_rung_that_launches_a_failed_configuration_is_skipped(tmp_path, body, history, rungs, skipped, give_up):
    decision = decide(make_recipe(tmp_path, body), fail(*history))
    assert decision.give_up == give_up
    if rungs is not None:
        assert (decision.plan.rungs, decision.plan.skipped) == (rungs, skipped)
    for number in skipped or ():
        assert any(note.startswith(f"skipped: rung {number} (") for note in decision.plan.notes)


def test_a_rung_matching_an_older_failed_configuration_is_skipped_too(tmp_path):
    body = PLAIN + """batch: {per_device: 2, per_device_arg: --bs}
ladder:
  - {on: [cuda_oom], args: {--mode: a}}
  - {on: [cuda_oom], args: {--mode: b}}
  - {on: [cuda_oom], args: {--mode: a}}
  - {on: [cuda_oom], args: {--mode: c}}
"""
    decision = decide(make_recipe(tmp_path, body), fail("cuda_oom", "cuda_oom", "cuda_oom"))
    assert (decision.plan.rungs, decision.plan.skipped) == ((1, 2, 4), (3,))
    assert "skipped: rung 3 (args --mode=a) relaunches rung 1, which already failed" in decision.plan.notes


def test_a_rejected_flag_is_blamed_on_the_rung_only_when_a_rung_added_it(tmp_path):
    from guardrun.launcher.ladder import added_flag_rejected
    recipe = make_recipe(tmp_path, PLAIN + "trainer: hf\nargs: {steps: 3}\nbatch: {per_device: 2}\n")
    plan = decide(recipe, fail("cuda_oom", "cuda_oom")).plan  # rung 3: gradient checkpointing
    error = "train.py: error: unrecognized arguments: --gradient_checkpointing True"
    assert added_flag_rejected(recipe, plan, error).startswith(
        " (--gradient_checkpointing was added by rung 3, and the script does not take it: set `trainer: plain`")
    assert added_flag_rejected(recipe, plan, "train.py: error: unrecognized arguments: --steps 3") == ""
    assert added_flag_rejected(recipe, decide(recipe, []).plan, error) == ""  # rung 0: the user's own command
