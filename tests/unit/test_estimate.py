"""Memory estimates: parameter counts against published sizes, model states against
DeepSpeed's own estimator functions, and whole estimates against FIELD_NOTES' situations."""
from __future__ import annotations

import contextlib
import dataclasses
import io

import pytest

from guardrun.launcher.estimate import (CPU_BUFFER_FACTOR, CUDA_CONTEXT, GIB, RANK_RUNTIME, Workload,
                                        activations, estimate, gpu_model_states, host_model_states)
from guardrun.launcher.params import ConfigError, count, from_count, lora_params

LLAMA2_7B = {"model_type": "llama", "hidden_size": 4096, "intermediate_size": 11008, "num_hidden_layers": 32,
             "num_attention_heads": 32, "num_key_value_heads": 32, "vocab_size": 32000}
VICUNA_13B = {**LLAMA2_7B, "hidden_size": 5120, "intermediate_size": 13824, "num_hidden_layers": 40,
              "num_attention_heads": 40, "num_key_value_heads": 40}
LLAMA3_8B = {**LLAMA2_7B, "intermediate_size": 14336, "num_key_value_heads": 8, "vocab_size": 128256}
# llava-hf/llava-1.5-7b-hf's config.json: the text model's shape is LlamaConfig's defaults.
LLAVA_HF_7B = {"model_type": "llava", "projector_hidden_act": "gelu",
               "text_config": {"model_type": "llama", "vocab_size": 32064},
               "vision_config": {"model_type": "clip_vision_model", "hidden_size": 1024, "image_size": 336,
                                 "intermediate_size": 4096, "num_hidden_layers": 24, "patch_size": 14}}
QWEN2_VL_7B = {"model_type": "qwen2_vl", "hidden_size": 3584, "intermediate_size": 18944, "num_hidden_layers": 28,
               "num_attention_heads": 28, "num_key_value_heads": 4, "vocab_size": 152064,
               "vision_config": {"depth": 32, "embed_dim": 1280, "mlp_ratio": 4, "hidden_size": 3584,
                                 "spatial_merge_size": 2}}
QWEN25_VL_32B = {"model_type": "qwen2_5_vl", "hidden_size": 5120, "intermediate_size": 27648,
                 "num_hidden_layers": 64, "num_attention_heads": 40, "num_key_value_heads": 8,
                 "vocab_size": 152064,
                 "vision_config": {"depth": 32, "hidden_size": 1280, "intermediate_size": 3456,
                                   "out_hidden_size": 5120, "spatial_merge_size": 2}}


@pytest.mark.parametrize("config,published", [
    (LLAMA2_7B, 6.74e9), (VICUNA_13B, 13.02e9), (LLAMA3_8B, 8.03e9), (LLAVA_HF_7B, 7.06e9),
    (QWEN2_VL_7B, 8.29e9), (QWEN25_VL_32B, 33.5e9)],
    ids=["llama2-7b", "vicuna-13b", "llama3-8b", "llava-1.5-7b-hf", "qwen2-vl-7b", "qwen2.5-vl-32b"])
def test_parameter_count_matches_the_model_cards(config, published):
    assert count(config).total == pytest.approx(published, rel=0.01)


def test_vision_language_parts_and_largest_layer():
    shape = count(LLAVA_HF_7B)
    assert shape.vision == pytest.approx(303e6, rel=0.01)         # CLIP ViT-L/14-336
    assert shape.projector == 1024 * 4096 + 4096 * 4096           # mlp2x_gelu
    assert shape.largest_layer == 32064 * 4096                     # the embedding
    assert (shape.hidden, shape.layers, shape.vocab) == (4096, 32, 32064)


def test_a_config_without_a_language_model_shape_is_refused():
    with pytest.raises(ConfigError, match="no hidden_size"):
        count({"model_type": "clip_vision_model", "vision_config": {}}, source="x/config.json")


def test_a_bare_parameter_count_gets_llama_proportions():
    seven, thirteen = from_count(7e9), from_count(13e9)
    assert (seven.total, seven.hidden, seven.layers) == (7_000_000_000, 4224, 33)
    assert (thirteen.hidden, thirteen.layers) == (5120, 40)  # Vicuna-13B's own shape


def test_lora_on_every_linear_layer_of_vicuna_13b_is_half_a_billion():
    # LLaVA v1.5's LoRA (r 128 on q, k, v, o, gate, up, down): ~0.5e9 trainable parameters.
    assert lora_params(count(VICUNA_13B), 128) == pytest.approx(5.0e8, rel=0.01)
    assert lora_params(count(VICUNA_13B), 128, "attention") == 40 * 128 * (4 * 10240)


# -- DeepSpeed's own estimators (deepspeed 0.19.8 in .venv): model states --------------------

ds_stage3 = pytest.importorskip("deepspeed.runtime.zero.stage3")
ds_stage12 = pytest.importorskip("deepspeed.runtime.zero.stage_1_and_2")


def _quiet(function, *args):
    with contextlib.redirect_stdout(io.StringIO()):
        return function(*args)


def _ours(shape, ranks, stage, offload_opt=False, offload_params=False):
    # DeepSpeed assumes a full fine-tune loaded in fp32 (its 4 bytes per parameter per rank).
    work = Workload(shape, shape.total, ranks=ranks, zero_stage=stage, offload_optimizer=offload_opt,
                    offload_params=offload_params, load_precision="fp32")
    return sum(n for _, n in gpu_model_states(work)), host_model_states(work)[0][1]


@pytest.mark.parametrize("ranks", [1, 4, 8])
@pytest.mark.parametrize("offload", [False, True])
def test_zero2_equals_deepspeeds_estimate(ranks, offload):
    shape = count(LLAMA2_7B)
    cpu, gpu = _quiet(ds_stage12.estimate_zero2_model_states_mem_needs, shape.total, ranks, 1, offload)
    assert _ours(shape, ranks, 2, offload) == (gpu, cpu)


@pytest.mark.parametrize("ranks", [1, 4, 8])
@pytest.mark.parametrize("offload_opt,offload_params", [(True, True), (True, False), (False, False)])
def test_zero3_matches_deepspeeds_estimate(ranks, offload_opt, offload_params):
    shape = count(VICUNA_13B)
    cpu, gpu, _ = _quiet(ds_stage3.estimate_zero3_model_states_mem_needs, shape.total, shape.largest_layer,
                         ranks, 1, offload_opt, offload_params, True)
    ours_gpu, ours_cpu = _ours(shape, ranks, 3, offload_opt, offload_params)
    assert ours_cpu == int(cpu)
    if offload_opt:
        assert ours_gpu == gpu
    else:  # we also count the 16-bit weight partition, 2Ψ/N, that DeepSpeed's 18Ψ/N leaves out
        assert ours_gpu == gpu + 2 * shape.total // ranks
        assert ours_gpu / gpu < 1.12


# -- FIELD_NOTES situations ---------------------------------------------------------------------

def test_situation_4_full_fine_tune_needs_48_and_80_gb():
    """XTuner's experience: LLaVA-v1.5 7B needs >= 48 GB, 13B >= 80 GB. The model states
    of a full fine-tune, summed over the GPUs, are well above both."""
    for config, floor in ((LLAVA_HF_7B, 48e9), (VICUNA_13B, 80e9)):
        shape = count(config)
        work = Workload(shape, shape.llm, ranks=8, zero_stage=3)
        states = sum(n for _, n in gpu_model_states(work)) - 4 * shape.largest_layer
        assert states * 8 >= floor
        # and under ZeRO-2 on 8 GPUs, the model states alone exceed a 24 GB RTX 3090
        zero2 = Workload(shape, shape.llm, ranks=8, zero_stage=2)
        assert sum(n for _, n in gpu_model_states(zero2)) > 24e9


def test_situation_3_llava_llama3_8b_zero2_does_not_fit_a_40gb_a100_even_at_batch_1():
    shape = count(LLAMA3_8B)
    shape = dataclasses.replace(shape, vision=304_000_000, total=shape.total + 304_000_000)  # + CLIP ViT-L
    base = Workload(shape, shape.llm, ranks=8, micro_batch=1, seq_len=2048, precision="fp16",
                    gradient_checkpointing=True, zero_stage=2)
    zero2 = estimate(base)
    assert zero2.gpu * 1.1 > 40e9
    zero3 = estimate(dataclasses.replace(base, zero_stage=3))
    assert zero3.gpu < 0.9 * 40e9


def test_activations_follow_korthikanti_and_checkpointing_cuts_them():
    shape = count(LLAMA2_7B)
    tokens, h, layers = 4 * 2048, 4096, 32
    head = tokens * 32000 * (2 + 4 + 4)
    full = activations(Workload(shape, shape.total, micro_batch=4, seq_len=2048))
    checkpointed = activations(Workload(shape, shape.total, micro_batch=4, seq_len=2048,
                                        gradient_checkpointing=True))
    assert full == layers * 34 * tokens * h + head
    assert checkpointed == layers * 2 * tokens * h + 34 * tokens * h + head
    assert checkpointed < full / 5


def test_lora_costs_only_weights_for_the_frozen_base():
    shape = count(VICUNA_13B)
    lora = lora_params(shape, 128)
    work = Workload(shape, lora, ranks=8, zero_stage=3)
    parts = dict(gpu_model_states(work))
    assert parts["weights"] == 2 * shape.total // 8
    assert parts["gradients and optimizer"] == 18 * lora // 8


def test_estimate_adds_context_and_rank_runtime():
    shape = from_count(1e9)
    result = estimate(Workload(shape, shape.total, ranks=2))
    assert result.part("CUDA context") == CUDA_CONTEXT
    assert result.part("rank runtime") == 2 * RANK_RUNTIME
    assert result.part("loading") == int(2 * shape.total * 2 * CPU_BUFFER_FACTOR)  # bf16, 2 ranks
    assert result.gpu == sum(n for _, n in result.gpu_parts) and result.host > 2 * RANK_RUNTIME
    assert result.gpu < 40 * GIB
