"""The exact command of a plan: what `guardrun plan` prints is what runs."""
from __future__ import annotations

import dataclasses
import os
import sys

import pytest

from guardrun.launcher.command import Resume, build, set_arg
from guardrun.launcher.failures import Failure, Kind
from guardrun.launcher.ladder import decide, walk
from guardrun.launcher.recipe import RecipeError

sys.path.insert(0, os.path.dirname(__file__) + "/..")
from recipes_util import make_recipe  # noqa: E402

TORCHRUN = """
launcher: torchrun
python: /venv/bin/python
script: train.py
args: {output_dir: out, lora_enable: true, bf16: true, report_to: none, per_device_train_batch_size: 99}
gpus: 2
batch: {per_device: 4, grad_accum: 1}
lr: {value: 2.0e-4}
checkpoints: {dir: out}
env: {NCCL_DEBUG: WARN}
"""


def test_torchrun_command_after_host_oom_resuming(tmp_path):
    recipe = make_recipe(tmp_path, TORCHRUN)
    plan = decide(recipe, [Failure(Kind.HOST_OOM)]).plan
    spec = build(recipe, plan, attempt=2, resume=Resume(tmp_path / "out" / "checkpoint-10"))
    assert list(spec.argv) == [
        "/venv/bin/python", "-m", "torch.distributed.run", "--standalone", "--nnodes", "1",
        "--nproc-per-node", "1", "--max-restarts", "0", str(tmp_path / "train.py"),
        "--output_dir", "out", "--lora_enable", "True", "--bf16", "True", "--report_to", "none",
        "--per_device_train_batch_size", "4", "--gradient_accumulation_steps", "2",
        "--learning_rate", "0.0002", "--resume_from_checkpoint", str(tmp_path / "out" / "checkpoint-10")]
    env = dict(spec.env)
    assert env["NCCL_DEBUG"] == "WARN" and env["GUARDRUN_ATTEMPT"] == "2" and env["GUARDRUN_RUNG"] == "1"
    assert "CUDA_VISIBLE_DEVICES" not in env  # CPU ranks: no GPU list to narrow
    assert spec.cwd == tmp_path


def test_deepspeed_with_gpu_list_uses_include(tmp_path):
    body = TORCHRUN.replace("launcher: torchrun", "launcher: deepspeed").replace("gpus: 2", "gpus: [2, 3, 5]")
    recipe = make_recipe(tmp_path, body)
    spec = build(recipe, decide(recipe, [Failure(Kind.HOST_OOM)]).plan, port=29611)
    assert spec.argv[:7] == ("/venv/bin/python", "-m", "deepspeed.launcher.runner", "--include",
                             "localhost:2,3", "--master_port", "29611")
    assert dict(spec.env)["CUDA_VISIBLE_DEVICES"] == "2,3"


def test_list_args_are_kept_and_overridden_in_place(tmp_path):
    body = TORCHRUN.replace(
        "args: {output_dir: out, lora_enable: true, bf16: true, report_to: none, per_device_train_batch_size: 99}",
        "args: [--per_device_train_batch_size=16, --lr_scheduler_type, cosine, --warmup_ratio, '-0.5']")
    recipe = make_recipe(tmp_path, body)
    spec = build(recipe, decide(recipe, []).plan)
    assert list(spec.argv[11:]) == ["--per_device_train_batch_size", "4", "--lr_scheduler_type", "cosine",
                                    "--warmup_ratio", "-0.5", "--gradient_accumulation_steps", "1",
                                    "--learning_rate", "0.0002"]


def test_set_arg_replaces_multi_value_flags_and_bare_flags():
    assert set_arg(["--a", "1", "2", "--b"], "--a", [3]) == ["--a", "3", "--b"]
    assert set_arg(["--b"], "--c", None) == ["--b", "--c"]
    assert set_arg(["--x=1", "--x", "2"], "--x", 5) == ["--x", "5"]


def test_python_module_launcher(tmp_path):
    body = TORCHRUN.replace("launcher: torchrun", "launcher: python").replace("script: train.py", "module: pkg.train")
    recipe = make_recipe(tmp_path, body)
    spec = build(recipe, decide(recipe, []).plan)
    assert spec.argv[:3] == ("/venv/bin/python", "-m", "pkg.train")


# -- issue 13 §2: which rung keys become flags -------------------------------------------------

HF_KEYS = {"gradient_checkpointing": True, "save_only_model": True, "dataloader_workers": 0}


@pytest.mark.parametrize("body, job_args", [
    # a plain script: nothing in the recipe says it takes TrainingArguments flags
    ("launcher: python\nscript: train.py\nargs: {steps: 3}\n", ["--steps", "3"]),
    ("launcher: python\nscript: train.py\ntrainer: plain\nargs: {report_to: none}\n", ["--report_to", "none"]),
    # an HF script: the flags, but not --dataloader_num_workers 0, TrainingArguments' own default
    ("launcher: python\nscript: train.py\nargs: {report_to: none}\n",
     ["--report_to", "none", "--gradient_checkpointing", "True", "--save_only_model", "True"]),
    ("launcher: python\nscript: train.py\ntrainer: hf\nargs: {dataloader_num_workers: 4}\n",
     ["--dataloader_num_workers", "0", "--gradient_checkpointing", "True", "--save_only_model", "True"]),
])
def test_hf_rung_keys_become_flags_only_for_an_hf_script(tmp_path, body, job_args):
    recipe = make_recipe(tmp_path, body)
    spec = build(recipe, dataclasses.replace(walk(recipe)[0], **HF_KEYS))
    assert list(spec.argv[2:]) == job_args


def test_llamafactory_config_decides_whether_the_loader_rung_changes_anything(tmp_path):
    body = """
launcher: command
command: [llamafactory-cli, train, cfg.yaml]
args_style: key=value
ranks_env: NPROC_PER_NODE
"""
    (tmp_path / "cfg.yaml").write_text("dataloader_num_workers: 4\nper_device_train_batch_size: 1\n")
    recipe = make_recipe(tmp_path, body)
    decision = decide(recipe, [Failure(Kind.HOST_OOM)])
    assert build(recipe, decision.plan).argv[3:] == ("dataloader_num_workers=0",)
    (tmp_path / "cfg.yaml").write_text("dataloader_num_workers: 0\n")
    decision = decide(recipe, [Failure(Kind.HOST_OOM)])
    assert decision.plan is None
    assert decision.give_up.endswith(f"(dataloader_num_workers is already 0: {tmp_path}/cfg.yaml)")


def test_a_plain_recipe_with_an_hf_rung_is_a_recipe_error(tmp_path):
    body = "launcher: python\nscript: train.py\ntrainer: plain\nladder:\n  - {on: [host_oom], dataloader_workers: 0}\n"
    with pytest.raises(RecipeError) as err:
        make_recipe(tmp_path, body)
    assert str(err.value) == (
        f"{tmp_path}/job.yaml:5: ladder[0].dataloader_workers: this rung passes --dataloader_num_workers, "
        "an HF TrainingArguments flag, but the recipe says `trainer: plain`: give your script's own flag "
        "in the rung's `args:`")
    with pytest.raises(RecipeError, match=r"job.yaml:3: trainer: expected one of auto, hf, plain, got 'hugging'"):
        make_recipe(tmp_path, "launcher: python\nscript: train.py\ntrainer: hugging\n")
