"""The DeepSpeed config a rung runs with, derived from the user's file (never modified).

Pure: a dict in, a dict out. The keys follow DeepSpeed's documented config
(FIELD_NOTES, DeepSpeed): the batch triple must satisfy
train_batch_size = micro × accumulation × world size, which DeepSpeed asserts at
start, so numeric values are rewritten for the rung's ranks and micro-batch while
"auto" (filled in by the HF Trainer integration from the command line) stays "auto".
"""
from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

from .plan import Plan

BATCH_KEYS = ("train_micro_batch_size_per_gpu", "gradient_accumulation_steps", "train_batch_size")
GATHER_KEYS = ("stage3_gather_16bit_weights_on_model_save", "stage3_gather_fp16_weights_on_model_save")


class DeepSpeedConfigError(ValueError):
    """The user's DeepSpeed config cannot be read or is not a JSON object."""


def load(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except OSError as err:
        raise DeepSpeedConfigError(f"{path}: cannot read the DeepSpeed config ({err.strerror})") from None
    except ValueError as err:
        raise DeepSpeedConfigError(f"{path}: the DeepSpeed config is not valid JSON ({err})") from None
    if not isinstance(data, dict):
        raise DeepSpeedConfigError(f"{path}: the DeepSpeed config must be a JSON object")
    return data


def derive(config: dict[str, Any], plan: Plan, *, load_universal: bool = False) -> dict[str, Any]:
    """`config` adjusted to `plan`; the input is not changed."""
    out = copy.deepcopy(config)
    _batch(out, plan)
    zero = out.setdefault("zero_optimization", {}) if _touches_zero(plan) else out.get("zero_optimization")
    if plan.zero_stage is not None:
        zero["stage"] = plan.zero_stage
    if plan.zero3_offload:
        zero["stage"] = 3
        for section in ("offload_optimizer", "offload_param"):
            zero.setdefault(section, {})["device"] = "cpu"
    if plan.offload_pin_memory is not None and zero is not None:
        # Pinned pages cannot be swapped and count fully against host RSS (FIELD_NOTES).
        for section in ("offload_optimizer", "offload_param"):
            if section in zero:
                zero[section]["pin_memory"] = plan.offload_pin_memory
    if plan.gather_16bit_on_save is not None:
        present = [key for key in GATHER_KEYS if key in zero] or [GATHER_KEYS[0]]
        for key in present:
            zero[key] = plan.gather_16bit_on_save
    if load_universal:
        out.setdefault("checkpoint", {})["load_universal"] = True
    return out


def _touches_zero(plan: Plan) -> bool:
    return (plan.zero_stage is not None or bool(plan.zero3_offload)
            or plan.gather_16bit_on_save is not None)


def _batch(config: dict[str, Any], plan: Plan) -> None:
    if plan.per_device is None:
        return
    values = {"train_micro_batch_size_per_gpu": plan.per_device,
              "gradient_accumulation_steps": plan.grad_accum,
              "train_batch_size": plan.per_device * plan.grad_accum * plan.ranks}
    for key in BATCH_KEYS:
        if key in config and config[key] != "auto":
            config[key] = values[key]


def render(config: dict[str, Any]) -> str:
    return json.dumps(config, indent=2, sort_keys=False) + "\n"
