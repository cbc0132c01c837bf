"""The recipe keys issue 7 adds: `model:`, `preflight:`, `launcher: command` and its
companions, and `missing_ok` loading for `guardrun plan`. Bad values are in test_recipe.py's table."""
from __future__ import annotations

import textwrap

import pytest

from guardrun.launcher.spec import Model
from guardrun.launcher.recipe import RecipeError, load_recipe


def write(tmp_path, body: str):
    (tmp_path / "train.py").write_text("")
    path = tmp_path / "job.yaml"
    path.write_text(textwrap.dedent(body))
    return path


def test_every_model_key(tmp_path):
    recipe = load_recipe(write(tmp_path, """\
        launcher: torchrun
        script: train.py
        model:
          path: lmsys/vicuna-13b-v1.5
          params: 1.332e10
          vision_params: 3.04e8
          vocab_size: 32000
          trainable: lora
          lora_rank: 128
          lora_targets: attention
          vision_tower_frozen: false
          precision: fp16
          load_precision: fp32
          seq_len: 4096
          gradient_checkpointing: true
          zero_stage: 3
          offload: optimizer
        preflight: off
        """))
    assert recipe.model == Model(path="lmsys/vicuna-13b-v1.5", params=1.332e10, vision_params=3.04e8,
                                 vocab_size=32000, trainable="lora", lora_rank=128, lora_targets="attention",
                                 vision_tower_frozen=False, precision="fp16", load_precision="fp32",
                                 seq_len=4096, gradient_checkpointing=True, zero_stage=3, offload="optimizer")
    assert recipe.preflight is False


def test_defaults_keep_the_preflight_on_and_no_model(tmp_path):
    recipe = load_recipe(write(tmp_path, "launcher: torchrun\nscript: train.py\nmodel: {params: 7e9}\n"))
    assert recipe.model == Model(params=7e9) and recipe.preflight is True
    assert (recipe.command, recipe.args_style, recipe.args_group, recipe.ranks_env) == ((), "flags", None, None)
    for written in ("on", "true", "off", "false"):
        loaded = load_recipe(write(tmp_path, f"launcher: torchrun\nscript: train.py\npreflight: {written}\n"))
        assert loaded.preflight is (written in ("on", "true"))


def test_launcher_command(tmp_path):
    recipe = load_recipe(write(tmp_path, """\
        launcher: command
        command: [xtuner, train, my_config]
        args_style: key=value
        args_group: --cfg-options
        ranks_env: NPROC_PER_NODE
        """))
    assert (recipe.launcher, recipe.script, recipe.module) == ("command", None, None)
    assert recipe.command == ("xtuner", "train", "my_config")
    assert (recipe.args_style, recipe.args_group, recipe.ranks_env) == ("key=value", "--cfg-options", "NPROC_PER_NODE")


def test_missing_paths_are_warnings_only_when_asked(tmp_path):
    path = write(tmp_path, """\
        workdir: elsewhere
        launcher: deepspeed
        script: train.py
        deepspeed: {config: zero3.json}
        """)
    with pytest.raises(RecipeError) as caught:
        load_recipe(path)
    assert (caught.value.key, caught.value.line) == ("workdir", 1)
    recipe = load_recipe(path, missing_ok=True)
    assert recipe.warnings == (
        f"{path}:1: workdir: directory not found: {tmp_path}/elsewhere (relative to the recipe's folder {tmp_path})",
        f"{path}:3: script: script not found: {tmp_path}/elsewhere/train.py "
        f"(relative paths start at workdir {tmp_path}/elsewhere)",
        f"{path}:4: deepspeed.config: DeepSpeed config not found: {tmp_path}/elsewhere/zero3.json "
        f"(relative paths start at workdir {tmp_path}/elsewhere)")
    assert recipe.script == tmp_path / "elsewhere" / "train.py"
