"""`guardrun plan` of each ready recipe prints the command its project documents for the
first rung, and the right overrides for later rungs.

The documented commands below are copied from the projects (file and repository named
on each); the recipes point at checkouts that do not exist here, which `plan` reports as
warnings and otherwise ignores: it runs nothing.
"""
from __future__ import annotations

import os
import shlex
import sys
from pathlib import Path

import pytest

from guardrun.launcher.units import GIB
from guardrun.supervisor.cli.planview import plan_command

sys.path.insert(0, os.path.dirname(__file__) + "/..")
from fakes import ScriptedMemory  # noqa: E402

RECIPES = Path(__file__).resolve().parents[2] / "recipes"
HOME = Path("~").expanduser()

# haotian-liu/LLaVA scripts/v1_5/finetune_lora.sh, after `deepspeed llava/train/train_mem.py`
LLAVA_ARGS = """
    --lora_enable True --lora_r 128 --lora_alpha 256 --mm_projector_lr 2e-5
    --deepspeed ./scripts/zero3.json --model_name_or_path lmsys/vicuna-13b-v1.5 --version v1
    --data_path ./playground/data/llava_v1_5_mix665k.json --image_folder ./playground/data
    --vision_tower openai/clip-vit-large-patch14-336
    --pretrain_mm_mlp_adapter ./checkpoints/llava-v1.5-13b-pretrain/mm_projector.bin
    --mm_projector_type mlp2x_gelu --mm_vision_select_layer -2 --mm_use_im_start_end False
    --mm_use_im_patch_token False --image_aspect_ratio pad --group_by_modality_length True
    --bf16 True --output_dir ./checkpoints/llava-v1.5-13b-lora --num_train_epochs 1
    --per_device_train_batch_size 16 --per_device_eval_batch_size 4 --gradient_accumulation_steps 1
    --evaluation_strategy "no" --save_strategy "steps" --save_steps 50000 --save_total_limit 1
    --learning_rate 2e-4 --weight_decay 0. --warmup_ratio 0.03 --lr_scheduler_type "cosine"
    --logging_steps 1 --tf32 True --model_max_length 2048 --gradient_checkpointing True
    --dataloader_num_workers 4 --lazy_preprocess True --report_to wandb
"""
# X-PLUG/mPLUG-DocOwl DocOwl1.5/scripts/finetune_docowl.sh, after `torchrun $DISTRIBUTED_ARGS
# mplug_docowl/train/train_docowl.py` (LOAD and DATA_FILE substituted)
DOCOWL_ARGS = """
    --deepspeed ./scripts/zero2.json --model_name_or_path ./mPLUG/DocOwl1.5-stage1 --version v1
    --data_path ./DocDownstream-1.0/train.jsonl --image_folder './DocDownstream-1.0/'
    --image_size 448 --crop_anchors 'grid_9' --add_global_img True --add_textual_crop_indicator True
    --bf16 True --output_dir ./checkpoints/docowl1.5 --num_train_epochs 3
    --per_device_train_batch_size 1 --per_device_eval_batch_size 1 --gradient_accumulation_steps 8
    --evaluation_strategy "no" --save_strategy "steps" --save_steps 500 --save_total_limit 4
    --learning_rate 2e-5 --weight_decay 0. --warmup_ratio 0.03 --lr_scheduler_type "cosine"
    --logging_steps 1 --tf32 True --model_max_length 3600 --gradient_checkpointing True
    --tune_vision2text True --freeze_vision_model True --freeze_backbone False
    --dataloader_num_workers 4 --lazy_preprocess True --report_to tensorboard
"""
# hiyouga/LLaMA-Factory examples (README: FORCE_TORCHRUN=1 llamafactory-cli train <yaml>)
LLAMAFACTORY = "llamafactory-cli train examples/train_full/qwen2vl_full_sft.yaml"
# InternLM/xtuner xtuner/configs/llava/llama3_8b_instruct_clip_vit_large_p14_336/README.md
XTUNER = ("xtuner train llava_llama3_8b_instruct_full_clip_vit_large_p14_336_lora_e1_gpu8_finetune "
          "--deepspeed deepspeed_zero2 --seed 1024")


def plan(name: str, gpu_free: int = 80 * GIB, host: int = 2000 * GIB) -> dict[int, dict[str, str]]:
    """{rung: {"command": ..., "env": ..., "head": ...}} from `guardrun plan --all`."""
    lines = plan_command(str(RECIPES / name), show_all=True, gpu_free=gpu_free, host_available=host,
                         gpus=None, memory=ScriptedMemory(total=host, readings=[(0, 0, host)]))
    rungs: dict[int, dict[str, str]] = {}
    current = None
    for line in lines:
        if line.startswith("== rung "):
            current = int(line.split()[2].rstrip(":"))
            rungs[current] = {"head": line}
        elif current is not None and line.startswith("   ") and ": " in line:
            key, _, value = line.strip().partition(": ")
            rungs[current].setdefault(key, value)
    rungs[-1] = {"all": "\n".join(lines)}
    return rungs


def argv(rung: dict[str, str]) -> list[str]:
    return shlex.split(rung["command"])


def env(rung: dict[str, str]) -> dict[str, str]:
    return dict(token.split("=", 1) for token in shlex.split(rung["env"]))


def test_llava_lora_rung_0_is_finetune_lora_sh():
    workdir = HOME / "LLaVA"
    expected = [str(workdir / "scripts/zero3.json") if t == "./scripts/zero3.json" else t
                for t in shlex.split(LLAVA_ARGS)]  # the config by absolute path: the same file from cwd
    rungs = plan("llava_lora.yaml")
    assert argv(rungs[0]) == [sys.executable, "-m", "deepspeed.launcher.runner", "--num_gpus", "8",
                              str(workdir / "llava/train/train_mem.py"), *expected]
    assert rungs[0]["cwd"] == str(workdir)
    assert f"script not found: {workdir}/llava/train/train_mem.py" in rungs[-1]["all"]
    assert "(plan runs nothing; `guardrun run` needs it)" in rungs[-1]["all"]


def test_llava_lora_later_rungs():
    rungs = plan("llava_lora.yaml")
    six = argv(rungs[1])
    assert six[3:5] == ["--num_gpus", "6"]  # situation 1's fix
    assert "global batch 128 cannot be kept with 6 ranks × micro-batch 16" in rungs[1]["note"]
    halved = argv(rungs[3])  # 4 ranks, then micro-batch 16 -> 8: accumulation 4, global 128
    assert _flag(halved, "--per_device_train_batch_size") == "8"
    assert _flag(halved, "--gradient_accumulation_steps") == "4"
    assert _flag(argv(rungs[5]), "--deepspeed") == "<attempt dir>/deepspeed.json"  # the offload copy
    assert '"device": "cpu"' in rungs[-1]["all"] and '"pin_memory": false' in rungs[-1]["all"]
    assert _flag(argv(rungs[6]), "--learning_rate") == "0.0001"


def test_docowl_rung_0_is_finetune_docowl_sh():
    workdir = HOME / "mPLUG-DocOwl" / "DocOwl1.5"
    expected = [str(workdir / "scripts/zero2.json") if t == "./scripts/zero2.json" else t
                for t in shlex.split(DOCOWL_ARGS)]
    rungs = plan("docowl.yaml")
    assert argv(rungs[0]) == [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nnodes", "1",
                              "--nproc-per-node", "8", "--max-restarts", "0",
                              str(workdir / "mplug_docowl/train/train_docowl.py"), *expected]
    assert argv(rungs[2])[7] == "4" and _flag(argv(rungs[2]), "--gradient_accumulation_steps") == "16"


def test_docowl_on_128gb_hosts_starts_at_zero3():
    """Situation 5: ZeRO-2 loads a whole copy per rank; with 120 GiB available the
    preflight starts at the ZeRO-3 rung."""
    rungs = plan("docowl.yaml", host=120 * GIB)
    assert rungs[1]["head"] == "== rung 1 (the first that fits): on host_oom"
    assert "rung 0 does not fit: predicted" in rungs[-1]["all"] and "of host memory" in rungs[-1]["all"]
    assert '"stage": 3' in rungs[-1]["all"]


def test_llamafactory_rung_0_is_the_documented_command():
    rungs = plan("llamafactory_qwen2vl_full_z3.yaml")
    assert argv(rungs[0]) == shlex.split(LLAMAFACTORY)
    assert env(rungs[0])["FORCE_TORCHRUN"] == "1" and env(rungs[0])["NPROC_PER_NODE"] == "8"


def test_llamafactory_later_rungs_are_key_value_overrides():
    rungs = plan("llamafactory_qwen2vl_full_z3.yaml")
    base = shlex.split(LLAMAFACTORY)
    assert argv(rungs[1]) == base + ["save_only_model=True", "deepspeed=<attempt dir>/deepspeed.json"]
    assert '"stage3_gather_16bit_weights_on_model_save": false' in rungs[-1]["all"]
    assert argv(rungs[2]) == base + ["save_only_model=True", "save_steps=2000",
                                     "deepspeed=<attempt dir>/deepspeed.json"]
    assert env(rungs[4])["NPROC_PER_NODE"] == "6" and "gradient_accumulation_steps=3" in argv(rungs[4])
    assert "learning_rate=5e-06" in argv(rungs[6])


def test_xtuner_rung_0_is_the_readme_command():
    rungs = plan("xtuner_llava_llama3.yaml")
    assert argv(rungs[0]) == shlex.split(XTUNER) and env(rungs[0])["NPROC_PER_NODE"] == "8"


def test_xtuner_later_rungs_and_situation_3_on_40gb_gpus():
    rungs = plan("xtuner_llava_llama3.yaml", gpu_free=40 * GIB)
    assert _flag(argv(rungs[1]), "--deepspeed") == "deepspeed_zero3"
    assert argv(rungs[2])[-3:] == ["--cfg-options", "train_dataloader.batch_size=4",
                                   "optim_wrapper.accumulative_counts=4"]
    assert argv(rungs[5])[-1] == "optim_wrapper.optimizer.lr=1e-05"
    # ZeRO-2 (rung 0) and ZeRO-3 at micro-batch 8 (rung 1) are predicted not to fit 40 GB:
    # the job starts at ZeRO-3 with micro-batch 4 and accumulation 4, global batch 128.
    assert rungs[2]["head"] == "== rung 2 (the first that fits): on cuda_oom"
    assert "rung 0 does not fit: predicted" in rungs[-1]["all"]


def test_every_ready_recipe_is_planned_without_error():
    names = sorted(p.name for p in RECIPES.glob("*.yaml"))
    assert {"llava_lora.yaml", "llamafactory_qwen2vl_full_z3.yaml", "xtuner_llava_llama3.yaml",
            "docowl.yaml"} <= set(names)
    for name in names:
        assert plan(name)[0]["command"]


def _flag(tokens: list[str], flag: str) -> str:
    return tokens[tokens.index(flag) + 1]


@pytest.fixture(autouse=True)
def _no_hf_cache(monkeypatch, tmp_path):
    """The estimate must not depend on what this machine's HF cache holds."""
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty-hub"))
