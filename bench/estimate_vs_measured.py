"""launcher/estimate.py against a real GPU: measured peak memory of one training step.

Builds a LLaMA-shaped model from a config (random weights, no download) with
transformers, runs forward + backward on random tokens, and prints, per case, what
estimate.py predicts and what torch.cuda.max_memory_allocated measured:

- activations: frozen bf16 weights (as under LoRA), the loss backpropagated to the
  input embeddings; the measured peak above the weights against activations()
  (Korthikanti et al. 2022, plus the logits);
- model states: fp32 weights, AdamW, one step; the measured memory after the step
  against 16 bytes per parameter (4 weights + 4 gradients + 8 Adam), the fp32 row of
  gpu_model_states() at ZeRO stage 0.

Needs a CUDA GPU, torch and transformers. The CUDA context is not counted by torch.

    python bench/estimate_vs_measured.py [--layers 8] [--batch 4] [--seq 2048]
"""
from __future__ import annotations

import argparse
import sys

import torch
from transformers import LlamaConfig, LlamaForCausalLM

from guardrun.launcher.estimate import Workload, activations, gpu_model_states
from guardrun.launcher.params import count

GIB = 1 << 30


def shape_config(layers: int) -> dict:
    return {"model_type": "llama", "hidden_size": 4096, "intermediate_size": 11008, "num_hidden_layers": layers,
            "num_attention_heads": 32, "num_key_value_heads": 32, "vocab_size": 32000}


def activation_case(config: dict, batch: int, seq: int, checkpointing: bool) -> tuple[float, float]:
    """Activations alone: frozen bf16 weights (as under LoRA), gradients flowing from the
    loss back to the input embeddings, so no parameter gradient shares the peak."""
    torch.cuda.empty_cache()
    model = LlamaForCausalLM(LlamaConfig(**config, attn_implementation="sdpa")).to("cuda", torch.bfloat16)
    model.requires_grad_(False)
    if checkpointing:
        model.gradient_checkpointing_enable()
    model.train()
    tokens = torch.randint(0, config["vocab_size"], (batch, seq), device="cuda")
    embeddings = model.model.embed_tokens(tokens).detach().requires_grad_(True)
    before = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    model(inputs_embeds=embeddings, labels=tokens).loss.backward()
    measured = torch.cuda.max_memory_allocated() - before
    shape = count(config)
    predicted = activations(Workload(shape, 0, micro_batch=batch, seq_len=seq,
                                     gradient_checkpointing=checkpointing))
    del model, tokens, embeddings
    return predicted, measured


def states_case(config: dict) -> tuple[float, float]:
    torch.cuda.empty_cache()
    model = LlamaForCausalLM(LlamaConfig(**config)).to("cuda", torch.float32)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5)
    tokens = torch.randint(0, config["vocab_size"], (1, 128), device="cuda")
    model(input_ids=tokens, labels=tokens).loss.backward()
    optimizer.step()
    measured = torch.cuda.memory_allocated()
    shape = count(config)
    parts = dict(gpu_model_states(Workload(shape, shape.total, precision="fp32")))
    del model, optimizer, tokens
    return parts["weights"] + parts["gradients and optimizer"], measured


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", type=int, default=8)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--seq", type=int, default=2048)
    args = parser.parse_args()
    if not torch.cuda.is_available():
        print("no CUDA GPU: nothing to measure")
        return 1
    config = shape_config(args.layers)
    print(f"{torch.cuda.get_device_name()}, torch {torch.__version__}, "
          f"{count(config).total / 1e9:.2f}B parameters ({args.layers} LLaMA-7B layers)")
    print(f"{'case':<44}{'predicted':>12}{'measured':>12}{'ratio':>8}")
    for checkpointing in (False, True):
        predicted, measured = activation_case(config, args.batch, args.seq, checkpointing)
        name = f"activations b{args.batch} s{args.seq} checkpointing={checkpointing}"
        print(f"{name:<44}{predicted / GIB:>10.2f}G{measured / GIB:>10.2f}G{predicted / measured:>8.2f}")
    predicted, measured = states_case(config)
    print(f"{'fp32 weights + grads + AdamW states':<44}{predicted / GIB:>10.2f}G{measured / GIB:>10.2f}G"
          f"{predicted / measured:>8.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
