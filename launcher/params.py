"""How many parameters a model has, from its Hugging Face `config.json` (a dict) alone.

Pure: the caller reads the file (modelinfo.py); nothing here loads weights. The counts
follow the layer shapes the configs describe (the same products the models' own
`__init__` allocates), so a 7B LLaMA comes out at 6.74e9 and llava-1.5-7b-hf at 7.06e9,
the figures their model cards give. Norms and biases are left out (under 0.1%).

Vision-language configs nest the language model under `text_config` (LLaVA-HF,
Qwen2.5-VL in newer releases) or keep it at the top (Qwen2-VL); the vision tower is
`vision_config` (CLIP/SigLIP keys, or Qwen's `depth`/`embed_dim`), or, in LLaVA's own
checkpoints, only named by `mm_vision_tower` with `mm_hidden_size`.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

#: LlamaConfig's defaults (transformers): llava-hf configs omit the text model's shape.
LLAMA_DEFAULTS = {"hidden_size": 4096, "intermediate_size": 11008, "num_hidden_layers": 32,
                  "num_attention_heads": 32, "vocab_size": 32000}
#: CLIPVisionConfig for openai/clip-vit-large-patch14(-336): what LLaVA v1.5 names by id only.
CLIP_LARGE = {"hidden_size": 1024, "intermediate_size": 4096, "num_hidden_layers": 24,
              "image_size": 336, "patch_size": 14}
#: Model types whose MLP has two matrices (up, down) instead of LLaMA's three (gate, up, down).
_TWO_MATRIX_MLP = {"gpt2", "gpt_neox", "opt", "bloom", "falcon", "phi", "clip_vision_model",
                   "siglip_vision_model", "vit", "bert"}


class ConfigError(ValueError):
    """The config has no shape this module can count."""


@dataclass(frozen=True)
class Shape:
    """Parameter counts and the dimensions activations depend on."""

    total: int            # every parameter
    llm: int              # the language model (embeddings and head included)
    vision: int           # the vision tower (0 for a text model)
    projector: int        # the vision-to-text projector
    largest_layer: int    # the biggest single module: DeepSpeed's `largest_layer_params`
    hidden: int
    layers: int
    vocab: int
    intermediate: int
    kv_dim: int           # width of k and v (grouped-query attention makes it < hidden)
    source: str = ""      # where the numbers came from, for `guardrun plan`


def count(config: Mapping[str, Any], source: str = "config.json") -> Shape:
    """The Shape a config.json describes. Raises ConfigError if it has no LM shape."""
    text = _text_part(config)
    hidden = _int(text, "hidden_size", "n_embd", "d_model")
    layers = _int(text, "num_hidden_layers", "n_layer", "num_layers")
    vocab = _int(text, "vocab_size") or _int(config, "vocab_size")
    if not (hidden and layers and vocab):
        raise ConfigError(f"{source}: no hidden_size / num_hidden_layers / vocab_size to count from")
    inter = _int(text, "intermediate_size", "ffn_dim", "n_inner") or 4 * hidden
    heads = _int(text, "num_attention_heads", "n_head") or max(1, hidden // 128)
    head_dim = _int(text, "head_dim") or hidden // heads
    kv_dim = (_int(text, "num_key_value_heads") or heads) * head_dim
    attention = 2 * hidden * heads * head_dim + 2 * hidden * kv_dim  # q, o; k, v
    mlp = _mlp_matrices(text) * hidden * inter
    tied = bool(text.get("tie_word_embeddings", config.get("tie_word_embeddings", False)))
    embeddings = vocab * hidden * (1 if tied else 2)
    llm = layers * (attention + mlp) + embeddings
    vision, vision_width, vision_largest = _vision(config)
    projector = _projector(config, vision_width, hidden)
    largest = max(vocab * hidden, hidden * inter, vision_largest)
    return Shape(total=llm + vision + projector, llm=llm, vision=vision, projector=projector,
                 largest_layer=largest, hidden=hidden, layers=layers, vocab=vocab,
                 intermediate=inter, kv_dim=kv_dim, source=source)


def from_count(params: float, vocab: int | None = None, vision: float = 0.0,
               source: str = "model.params") -> Shape:
    """A LLaMA-proportioned Shape for a bare parameter count (`model.params: 7e9`).

    Decoder LLMs keep about 12·L·h² parameters in their layers with L ≈ h/128 (LLaMA
    7B: h 4096, L 32; 13B: 5120, 40), so h ≈ (128·Ψ/12)^(1/3), rounded to a multiple
    of 128. The activation estimate needs h and L; the memory of weights and optimizer
    states needs only Ψ, which stays exact.
    """
    llm = int(params) - int(vision)
    hidden = max(128, round((128 * llm / 12) ** (1 / 3) / 128) * 128)
    layers = max(1, round(hidden / 128))
    vocab = vocab or LLAMA_DEFAULTS["vocab_size"]
    inter = round(hidden * 8 / 3 / 256) * 256  # LLaMA's SwiGLU width, about 8h/3
    return Shape(total=int(params), llm=llm, vision=int(vision), projector=0,
                 largest_layer=max(vocab * hidden, hidden * inter), hidden=hidden, layers=layers,
                 vocab=vocab, intermediate=inter, kv_dim=hidden, source=source)


def lora_params(shape: Shape, rank: int, targets: str = "all-linear") -> int:
    """Trainable parameters LoRA adds: r·(in + out) per adapted matrix, per layer.

    `all-linear` adapts q, k, v, o and the MLP's gate, up and down (LLaVA's
    find_all_linear_names, PEFT's "all-linear", LLaMA-Factory's `lora_target: all`);
    `attention` only q, k, v, o.
    """
    h, kv, i = shape.hidden, shape.kv_dim, shape.intermediate
    per_layer = rank * ((h + h) * 2 + (h + kv) * 2)  # q and o; k and v
    if targets == "all-linear":
        per_layer += rank * (h + i) * 3               # gate, up, down
    return shape.layers * per_layer


# -- pieces --------------------------------------------------------------------------

def _text_part(config: Mapping[str, Any]) -> Mapping[str, Any]:
    for key in ("text_config", "llm_config", "language_config"):
        part = config.get(key)
        if isinstance(part, Mapping):
            if part.get("model_type", "llama") == "llama":
                return {**LLAMA_DEFAULTS, **part}
            return part
    return config


def _mlp_matrices(part: Mapping[str, Any]) -> int:
    return 2 if part.get("model_type") in _TWO_MATRIX_MLP else 3


def _vision(config: Mapping[str, Any]) -> tuple[int, int, int]:
    """(parameters, output width, largest module) of the vision tower."""
    part = config.get("vision_config")
    if not isinstance(part, Mapping):
        tower = str(config.get("mm_vision_tower") or "")
        if "clip-vit-large" not in tower:
            return 0, _int(config, "mm_hidden_size") or 0, 0
        part = {**CLIP_LARGE, "model_type": "clip_vision_model"}
    if _int(part, "depth"):  # Qwen2-VL / Qwen2.5-VL: depth, embed_dim, mlp_ratio or intermediate_size
        width = _int(part, "embed_dim") or _int(part, "hidden_size") or 1280
        layers = _int(part, "depth")
        inter = _int(part, "intermediate_size") or int(width * float(part.get("mlp_ratio", 4)))
        matrices = 3 if _int(part, "intermediate_size") else 2
        merged = width * int(part.get("spatial_merge_size", 2)) ** 2
        out = _int(part, "out_hidden_size") or _int(part, "hidden_size") or width
        merger = merged * merged + merged * out
        body = layers * (4 * width * width + matrices * width * inter)
        return body + merger, 0, max(width * inter, merged * merged)
    width = _int(part, "hidden_size") or 768
    layers = _int(part, "num_hidden_layers") or 12
    inter = _int(part, "intermediate_size") or 4 * width
    patches = (_int(part, "image_size") or 224) // (_int(part, "patch_size") or 14)
    embed = 3 * (_int(part, "patch_size") or 14) ** 2 * width + (patches * patches + 1) * width
    body = layers * (4 * width * width + _mlp_matrices(part) * width * inter)
    return body + embed, width, width * inter


def _projector(config: Mapping[str, Any], vision_width: int, hidden: int) -> int:
    """LLaVA's mlp2x_gelu projector: vision width -> h -> h (a linear one: width -> h)."""
    if not vision_width:
        return 0
    two_layers = (str(config.get("mm_projector_type", "")).startswith("mlp")
                  or "projector_hidden_act" in config)  # llava-hf: Linear, act, Linear
    if two_layers:
        return vision_width * hidden + hidden * hidden
    return vision_width * hidden


def _int(part: Mapping[str, Any], *keys: str) -> int:
    for key in keys:
        value = part.get(key)
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            return value
    return 0
