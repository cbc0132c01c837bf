"""The derived DeepSpeed config: the rung's knobs applied, the user's dict untouched."""
from __future__ import annotations

import copy

import pytest

from guardrun.launcher.dsconfig import DeepSpeedConfigError, derive, load
from guardrun.launcher.plan import Plan

USER = {
    "train_micro_batch_size_per_gpu": 16, "gradient_accumulation_steps": 1, "train_batch_size": "auto",
    "zero_optimization": {"stage": 2, "offload_optimizer": {"device": "cpu", "pin_memory": True},
                          "stage3_gather_16bit_weights_on_model_save": True},
    "bf16": {"enabled": "auto"},
}


def plan(**kw) -> Plan:
    base = dict(rungs=(1,), ranks=6, gpu_ids=None, per_device=8, grad_accum=3, global_batch=144,
                target_global_batch=128)
    base.update(kw)
    return Plan(**base)


def test_numeric_batch_keys_follow_the_rung_auto_stays():
    original = copy.deepcopy(USER)
    out = derive(USER, plan())
    assert (out["train_micro_batch_size_per_gpu"], out["gradient_accumulation_steps"]) == (8, 3)
    assert out["train_batch_size"] == "auto"
    assert USER == original


def test_zero3_offload_without_pinned_memory_and_no_16bit_gather():
    out = derive(USER, plan(zero3_offload=True, offload_pin_memory=False, gather_16bit_on_save=False))
    zero = out["zero_optimization"]
    assert zero["stage"] == 3
    assert zero["offload_optimizer"] == {"device": "cpu", "pin_memory": False}
    assert zero["offload_param"] == {"device": "cpu", "pin_memory": False}
    assert zero["stage3_gather_16bit_weights_on_model_save"] is False


def test_stage_change_and_universal_load_on_a_config_without_zero_section():
    out = derive({"train_batch_size": 64}, plan(zero_stage=3), load_universal=True)
    assert out["zero_optimization"] == {"stage": 3}
    assert out["train_batch_size"] == 8 * 3 * 6
    assert out["checkpoint"] == {"load_universal": True}


def test_legacy_fp16_gather_key_is_the_one_rewritten():
    user = {"zero_optimization": {"stage": 3, "stage3_gather_fp16_weights_on_model_save": True}}
    zero = derive(user, plan(gather_16bit_on_save=False))["zero_optimization"]
    assert zero == {"stage": 3, "stage3_gather_fp16_weights_on_model_save": False}


@pytest.mark.parametrize("text,message", [("{", "not valid JSON"), ("[1]", "must be a JSON object")])
def test_bad_user_config_is_named(tmp_path, text, message):
    path = tmp_path / "ds.json"
    path.write_text(text)
    with pytest.raises(DeepSpeedConfigError, match=message) as info:
        load(path)
    assert str(path) in str(info.value)
