"""Tools that are not Python scripts: `launcher: command`, key=value overrides, --cfg-options."""
from __future__ import annotations

import os
import sys

from guardrun.launcher.command import Resume, build, written_as
from guardrun.launcher.failures import Failure, Kind
from guardrun.launcher.kvargs import render_kv, set_kv
from guardrun.launcher.ladder import decide, walk

sys.path.insert(0, os.path.dirname(__file__) + "/..")
from recipes_util import make_recipe  # noqa: E402

LLAMAFACTORY = """
launcher: command
command: [llamafactory-cli, train, examples/train_full/qwen2vl_full_sft.yaml]
args_style: key=value
args: {report_to: none}
ranks_env: NPROC_PER_NODE
env: {FORCE_TORCHRUN: "1"}
gpus: 8
batch: {per_device: 2, grad_accum: 2, per_device_arg: per_device_train_batch_size,
        grad_accum_arg: gradient_accumulation_steps}
lr: {value: 1.0e-5, arg: learning_rate}
checkpoints: {dir: saves, resume_arg: resume_from_checkpoint}
ladder:
  - {on: [host_oom], gpus: 6}
  - {on: [cuda_oom], batch: halve, gradient_checkpointing: true}
  - {on: [save_failed], save_only_model: true, args: {save_steps: 1000}}
"""

XTUNER = """
launcher: command
command: [xtuner, train, llava_cfg]
args_style: key=value
args_group: --cfg-options
args: {--deepspeed: deepspeed_zero2, --seed: 1024}
ranks_env: NPROC_PER_NODE
gpus: 8
batch: {per_device: 8, grad_accum: 2, per_device_arg: train_dataloader.batch_size,
        grad_accum_arg: optim_wrapper.accumulative_counts}
lr: {value: 2.0e-5, arg: optim_wrapper.optimizer.lr}
checkpoints: {dir: work_dirs/llava_cfg, resume_arg: --resume}
ladder:
  - {on: [cuda_oom], zero_stage: 3, args: {--deepspeed: deepspeed_zero3}}
  - {on: [cuda_oom], batch: halve}
  - {on: [nan_loss], lr: halve}
"""


def test_rung_0_is_the_tools_own_command(tmp_path):
    recipe = make_recipe(tmp_path, LLAMAFACTORY)
    spec = build(recipe, walk(recipe)[0])
    # the batch and lr the tool's yaml already has are not repeated
    assert spec.argv == ("llamafactory-cli", "train", "examples/train_full/qwen2vl_full_sft.yaml", "report_to=none")
    env = dict(spec.env)
    assert (env["FORCE_TORCHRUN"], env["NPROC_PER_NODE"]) == ("1", "8")
    assert spec.cwd == tmp_path


def test_later_rungs_pass_what_they_change_as_key_value(tmp_path):
    recipe = make_recipe(tmp_path, LLAMAFACTORY)
    history = [Failure(Kind.HOST_OOM), Failure(Kind.CUDA_OOM), Failure(Kind.SAVE_FAILED)]
    spec = build(recipe, decide(recipe, history).plan, resume=_resume(tmp_path / "saves" / "checkpoint-500"))
    assert spec.argv[3:] == ("report_to=none", "per_device_train_batch_size=1", "gradient_accumulation_steps=5",
                             "gradient_checkpointing=True", "save_only_model=True", "save_steps=1000",
                             f"resume_from_checkpoint={tmp_path}/saves/checkpoint-500")
    assert dict(spec.env)["NPROC_PER_NODE"] == "6"


def test_xtuner_overrides_go_after_cfg_options_and_flags_stay_flags(tmp_path):
    recipe = make_recipe(tmp_path, XTUNER)
    first = build(recipe, walk(recipe)[0])
    assert first.argv == ("xtuner", "train", "llava_cfg", "--deepspeed", "deepspeed_zero2", "--seed", "1024")
    history = [Failure(Kind.CUDA_OOM), Failure(Kind.CUDA_OOM), Failure(Kind.NAN_LOSS)]
    later = build(recipe, decide(recipe, history).plan, resume=_resume(tmp_path / "work_dirs/llava_cfg/iter_500.pth"))
    assert later.argv[3:] == ("--deepspeed", "deepspeed_zero3", "--seed", "1024", "--cfg-options",
                              "train_dataloader.batch_size=4", "optim_wrapper.accumulative_counts=4",
                              "optim_wrapper.optimizer.lr=1e-05",
                              "--resume", f"{tmp_path}/work_dirs/llava_cfg/iter_500.pth")


def test_set_kv_replaces_in_place_and_keeps_the_group_together():
    tokens = ["--a", "1", "--cfg-options", "x=1", "y=2", "--resume", "p"]
    assert set_kv(tokens, "y", 3, "--cfg-options") == ["--a", "1", "--cfg-options", "x=1", "y=3", "--resume", "p"]
    assert set_kv(tokens, "z", [1, 2], "--cfg-options") == ["--a", "1", "--cfg-options", "x=1", "y=2", "z=[1,2]",
                                                            "--resume", "p"]
    assert set_kv(["cfg.yaml"], "deepspeed", None) == ["cfg.yaml", "deepspeed=null"]
    assert [render_kv(v) for v in (True, 2.0, 1e-05, "a b")] == ["True", "2", "1e-05", "a b"]


def test_a_number_spelled_otherwise_keeps_the_users_spelling():
    assert written_as(["--learning_rate", "2e-4"], "--learning_rate", "0.0002")
    assert not written_as(["--learning_rate", "2e-4"], "--learning_rate", "0.0001")
    assert not written_as(["--bf16", "True"], "--bf16", True)


def _resume(path):
    return Resume(path)
