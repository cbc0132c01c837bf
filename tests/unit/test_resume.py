"""Which checkpoint to resume, what to set aside, and what it needs first (launcher.resume)."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from guardrun.launcher import checkpoints
from guardrun.launcher.checkpoints import Checkpoint, Saved
from guardrun.launcher.plan import Plan
from guardrun.launcher.resume import SetAside, adapt, left_in_place, pick_checkpoint


def ck(step: int, valid: bool = True, reason: str = "") -> Checkpoint:
    return Checkpoint(Path(f"/out/checkpoint-{step}"), step, valid, reason)


def plan(ranks: int = 2, per_device: int | None = 4) -> Plan:
    return Plan(rungs=(1,), ranks=ranks, gpu_ids=None, per_device=per_device,
                grad_accum=1, global_batch=(per_device or 0) * ranks)


def test_newest_valid_is_chosen_and_newer_incomplete_ones_are_set_aside():
    found = [ck(10), ck(20, False, "no trainer_state.json"), ck(30), ck(40, False, "empty file")]
    choice = pick_checkpoint(found)
    assert choice.checkpoint.step == 30
    assert [(a.checkpoint.step, a.label, a.why) for a in choice.set_aside] == [(40, "incomplete", "empty file")]


def test_older_invalid_checkpoints_are_left_alone():
    """The trainer only ever picks the newest; an old broken one is not in its way."""
    choice = pick_checkpoint([ck(10, False, "x"), ck(20)])
    assert choice.checkpoint.step == 20 and choice.set_aside == ()


def test_with_nothing_valid_everything_in_the_way_is_set_aside_and_it_starts_fresh():
    choice = pick_checkpoint([ck(10, False, "a"), ck(20, False, "b")])
    assert choice.checkpoint is None
    assert [a.checkpoint.step for a in choice.set_aside] == [10, 20]


def test_nan_rollback_resumes_before_the_first_nan_and_sets_later_ones_aside():
    choice = pick_checkpoint([ck(10), ck(20), ck(30), ck(40, False, "torn")], before_step=25)
    assert choice.checkpoint.step == 20
    assert [(a.checkpoint.step, a.label) for a in choice.set_aside] == [(30, "nan"), (40, "incomplete")]
    assert "first NaN (step 25)" in choice.set_aside[0].why


def test_a_smaller_micro_batch_rewrites_the_saved_train_batch_size():
    decided = adapt(Saved(train_batch_size=8), plan(per_device=4))
    assert decided.fix_batch == 4 and "train_batch_size 8" in decided.notes[0]
    assert adapt(Saved(train_batch_size=4), plan(per_device=4)).fix_batch is None
    assert adapt(Saved(train_batch_size=8), plan(per_device=None)).fix_batch is None


@pytest.mark.parametrize("policy,expect", [
    ("universal", dict(convert=True, load_universal=True, weights_only=False, refuse="")),
    ("weights_only", dict(convert=False, load_universal=False, weights_only=True, refuse="")),
    ("fail", dict(convert=False, load_universal=False, weights_only=False, refuse="'fail'")),
])
def test_a_world_size_change_follows_the_recipe_policy(policy, expect):
    tag = Path("/out/checkpoint-30/global_step30")
    decided = adapt(Saved(ds_tag=tag, world_size=2), plan(ranks=1), policy)
    assert (decided.convert == tag) is expect["convert"]
    assert decided.load_universal is expect["load_universal"]
    assert decided.weights_only is expect["weights_only"]
    assert (expect["refuse"] in decided.refuse) if expect["refuse"] else decided.refuse == ""
    if policy == "fail":
        assert "saved by 2 rank(s), this rung runs 1" in decided.refuse


def test_an_existing_universal_conversion_is_loaded_not_redone():
    tag = Path("/out/checkpoint-30/global_step30")
    decided = adapt(Saved(ds_tag=tag, world_size=2, universal=tag.with_name("global_step30_universal")),
                    plan(ranks=1))
    assert decided.convert is None and decided.load_universal


def test_an_lr_rung_rescales_the_saved_scheduler_that_would_undo_it():
    sched = Path("/out/checkpoint-10/scheduler.pt")
    halved = Plan(rungs=(1,), ranks=1, gpu_ids=None, lr=1e-4)
    decided = adapt(Saved(scheduler=sched), halved, base_lr=2e-4)
    assert decided.set_lr == 1e-4 and "rescaling it to 0.0001" in decided.notes[0]
    assert adapt(Saved(scheduler=sched), halved, base_lr=1e-4).set_lr is None  # the recipe's own lr
    assert adapt(Saved(), halved, base_lr=2e-4).set_lr is None                 # nothing restores it


def test_a_model_only_checkpoint_is_resumed_with_a_warning(tmp_path):
    path = _hf_checkpoint(tmp_path, 12)
    assert checkpoints.inspect(path).model_only
    (path / "optimizer.pt").write_bytes(b"x")
    assert not checkpoints.inspect(path).model_only
    decided = adapt(Saved(model_only=True), plan())
    assert "the optimizer state and the learning-rate schedule start over" in decided.notes[0]


def test_same_world_size_needs_nothing():
    decided = adapt(Saved(ds_tag=Path("/o/global_step3"), world_size=2), plan(ranks=2))
    assert decided == type(decided)()


def test_unmovable_checkpoints_warn_with_an_explicit_resume_path_and_refuse_without():
    broken = SetAside(ck(40, False, "no trainer_state.json"), "incomplete", "no trainer_state.json")
    warning, refusal = left_in_place([broken], ck(30), "--resume_from_checkpoint", "read-only")
    assert refusal == "" and warning == ("could not set aside checkpoint-40 (no trainer_state.json): "
                                         "read-only; resuming from checkpoint-30, passed with "
                                         "--resume_from_checkpoint")
    warning, refusal = left_in_place([broken], ck(30), None, "read-only")
    assert warning == "" and "checkpoints.resume_arg: null" in refusal and "checkpoint-40" in refusal
    assert left_in_place([], ck(30), None, "") == ("", "")


# -- the disk side: inspect and quarantine ------------------------------------------------------

def _hf_checkpoint(root: Path, step: int, ranks: int = 0, batch: int = 4) -> Path:
    path = root / f"checkpoint-{step}"
    path.mkdir(parents=True)
    (path / "adapter_model.safetensors").write_bytes(_safetensors())
    (path / "trainer_state.json").write_text(json.dumps({"global_step": step, "train_batch_size": batch}))
    if ranks:
        tag = path / f"global_step{step}"
        tag.mkdir()
        (path / "latest").write_text(tag.name)
        for rank in range(ranks):
            (tag / f"zero_pp_rank_{rank}_mp_rank_00_model_states.pt").write_bytes(b"PK" + b"\0" * 30 + b"PK\x05\x06" + b"\0" * 18)
            (tag / f"zero_pp_rank_{rank}_mp_rank_00_optim_states.pt").write_bytes(b"PK" + b"\0" * 30 + b"PK\x05\x06" + b"\0" * 18)
    return path


def _safetensors() -> bytes:
    header = json.dumps({"w": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}}).encode()
    return len(header).to_bytes(8, "little") + header + b"\0\0\0\0"


@pytest.mark.parametrize("saved, ranks, nodes, convert, said", [
    (4, 2, 2, False, ""),                               # 2 nodes x 2 ranks: the same 4, no conversion
    (2, 2, 2, True, "saved by 2 rank(s), this rung runs 4 (2 on each of 2 nodes)"),
    (4, 1, 2, True, "saved by 4 rank(s), this rung runs 2 (1 on each of 2 nodes)"),  # a gpus rung on both
    (4, 4, 1, False, ""),
])
def test_a_multi_node_world_size_is_every_nodes_ranks(saved, ranks, nodes, convert, said):
    decided = adapt(Saved(ds_tag=Path("/o/global_step3"), world_size=saved), plan(ranks=ranks), nodes=nodes)
    assert (decided.convert is not None) == convert
    assert any(said in note for note in decided.notes) if said else decided.notes == ()


def test_inspect_reads_batch_world_size_and_a_finished_universal_conversion(tmp_path):
    path = _hf_checkpoint(tmp_path, 30, ranks=2, batch=8)
    saved = checkpoints.inspect(path)
    assert (saved.train_batch_size, saved.world_size, saved.ds_tag, saved.universal) == (8, 2, path / "global_step30", None)
    (path / "global_step30_universal").mkdir()
    assert checkpoints.inspect(path).universal is None  # not finished: latest_universal not written yet
    (path / "latest_universal").write_text("global_step30_universal")
    assert checkpoints.inspect(path).universal == path / "global_step30_universal"
    assert checkpoints.inspect(path).scheduler is None
    assert not checkpoints.inspect(path).model_only      # a DeepSpeed tag holds the optimizer
    (path / "scheduler.pt").write_bytes(b"x")
    assert checkpoints.inspect(path).scheduler == path / "scheduler.pt"


def test_quarantine_moves_it_out_of_the_trainers_sight_and_keeps_every_byte(tmp_path):
    path = _hf_checkpoint(tmp_path, 40)
    before = (path / "adapter_model.safetensors").read_bytes()
    moved = checkpoints.quarantine(path, "incomplete", "20261125T101500")
    assert moved == tmp_path / "guardrun-quarantine" / "checkpoint-40.incomplete-20261125T101500"
    assert not path.exists() and (moved / "adapter_model.safetensors").read_bytes() == before
    # transformers' own globs no longer see it, and guardrun's finder does not either.
    assert not list(tmp_path.glob("checkpoint-*")) and checkpoints.find(tmp_path) == []
    again = _hf_checkpoint(tmp_path, 40)
    assert checkpoints.quarantine(again, "incomplete", "20261125T101500").name.endswith("-2")
