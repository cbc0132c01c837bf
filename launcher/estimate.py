"""Predicted memory of one rung: bytes per GPU, and bytes of host memory for the whole job.

Pure arithmetic on a `Workload` (what the rung runs: parameters, ranks, micro-batch,
sequence length, ZeRO stage, offload). The formulas, and where they come from:

Model states, per GPU (Ψ all parameters, Ψt trainable ones, N data-parallel ranks):

- Mixed-precision Adam keeps 16-bit weights (2 B/param), 16-bit gradients (2) and fp32
  master weights, momentum and variance (12): the "2Ψ + 2Ψ + KΨ, K = 12" of the ZeRO
  paper (Rajbhandari et al., 2020, section 3.1). DeepSpeed's stage-1/2 optimizer also
  keeps an fp32 copy of its gradient partition, which is why its estimator
  (`deepspeed.runtime.zero.stage_1_and_2.estimate_zero2_model_states_mem_needs`)
  charges 18 bytes per parameter: 2 + 4 + 4 + 8. We use those 18 bytes (16-bit grad,
  fp32 grad, fp32 master, Adam m and v) per *trainable* parameter; frozen parameters
  (a LoRA base model, a frozen vision tower) cost only their 16-bit weights.
- ZeRO-1 partitions the 16 optimizer-side bytes over N, ZeRO-2 also the 16-bit
  gradients, ZeRO-3 also the weights, plus one gathered layer's 16-bit weights and
  gradients (4 × largest layer), as in
  `deepspeed.runtime.zero.stage3.estimate_zero3_model_states_mem_needs`. That
  function charges 18Ψ/N for ZeRO-3 in all; we charge 2Ψ/N for the weights on top,
  so our ZeRO-3 figure is at most 2Ψ/N (about 11%) above DeepSpeed's.
- Offloading the optimizer leaves only the weights (2Ψ, or 2Ψ/N + the gathered layer
  with ZeRO-3) on the GPU; offloading the parameters too leaves the gathered layer.

Activations, per GPU (s tokens, b micro-batch, h hidden, L layers, V vocabulary):
Korthikanti et al., "Reducing Activation Recomputation in Large Transformer Models"
(2022), eq. 1 without tensor parallelism: s·b·h·(34 + 5·a·s/h) bytes per layer with
16-bit activations. Flash/SDPA attention (LLaVA's train_mem.py, LLaMA-Factory's
default) does not keep the a·s² scores, leaving 34·s·b·h. Gradient checkpointing keeps
only each layer's 16-bit input (2·s·b·h) and recomputes one layer at a time (34·s·b·h
more). The head adds s·b·V·(2 + 4 + 4): 16-bit logits, the fp32 copy the loss is
computed in, and the fp32 log-softmax kept for backward (HF's LlamaForCausalLM).

Host memory, the whole job (DeepSpeed's estimator again, its cpu_mem):
- Loading: without ZeRO-3 every rank builds the whole model on the CPU before DeepSpeed
  moves it (N × Ψ × load bytes; DeepSpeed assumes fp32, 4 B). With ZeRO-3 the HF
  integration builds under `zero.Init`, one layer at a time (4 × largest layer per
  rank), but a rank still reads a whole `.bin` shard into its own memory
  (FIELD_NOTES situation 1: 8 ranks x one shard each is what took the machine).
- Offload: fp32 master, fp32 gradients and Adam states (16 B per trainable
  parameter) when the optimizer is offloaded, plus the 16-bit weights (2 B) when the
  parameters are; pinned by default, so all of it is resident.
- The larger of the two phases times DeepSpeed's `additional_buffer_factor` 1.5, plus
  each rank's own runtime (interpreter, torch and CUDA libraries): RANK_RUNTIME.

Checked on an H100 (torch 2.11, transformers 5.17, 8 LLaMA-7B layers, SDPA attention,
bench/estimate_vs_measured.py): activations predicted/measured 0.98 without and 1.15
with gradient checkpointing (b4 × s2048 and b1 × s4096 alike); fp32 weights, gradients
and AdamW states 28.03 GiB predicted, 28.09 GiB measured. Against DeepSpeed 0.19.8's
estimators: equal for ZeRO-2 and for ZeRO-3 with offload, +2Ψ/N without (tests/unit/
test_estimate.py).
"""
from __future__ import annotations

from dataclasses import dataclass

from .params import Shape

GIB = 1 << 30
#: Per GPU: the CUDA context and cuBLAS/cuDNN workspaces a torch rank holds (0.5-1 GiB on
#: A100/H100 with torch 2.x); the fit margin covers the allocator's fragmentation.
CUDA_CONTEXT = 1 * GIB
#: Per rank on the host: interpreter, torch and CUDA libraries, NCCL and pinned staging
#: buffers, before any model state. An assumption (2-3 GiB per CUDA rank is typical);
#: DataLoader workers come on top.
RANK_RUNTIME = int(2.5 * GIB)
#: DeepSpeed's `additional_buffer_factor` on CPU memory.
CPU_BUFFER_FACTOR = 1.5
#: Bytes per element for each precision a recipe may name.
PRECISION_BYTES = {"bf16": 2, "fp16": 2, "fp32": 4}


@dataclass(frozen=True)
class Workload:
    """What one rung runs, as far as memory is concerned."""

    shape: Shape
    trainable: int                 # parameters that get gradients and optimizer states
    ranks: int = 1
    micro_batch: int = 1
    seq_len: int = 2048
    precision: str = "bf16"        # of weights and activations in training
    load_precision: str | None = None  # of the weights while loading (default: precision)
    gradient_checkpointing: bool = False
    zero_stage: int = 0
    offload_optimizer: bool = False
    offload_params: bool = False   # ZeRO-3 only
    shard_bytes: int | None = None  # the largest checkpoint file a rank reads whole


@dataclass(frozen=True)
class Estimate:
    gpu: int                                # bytes on each GPU
    host: int                               # bytes of host memory, all ranks together
    gpu_parts: tuple[tuple[str, int], ...]  # what the GPU figure is made of
    host_parts: tuple[tuple[str, int], ...]

    def part(self, name: str) -> int:
        return dict(self.gpu_parts + self.host_parts).get(name, 0)


def estimate(work: Workload) -> Estimate:
    """Bytes per GPU and host bytes for `work` (see the module docstring for the formulas)."""
    gpu_parts = gpu_model_states(work) + (("activations", activations(work)),
                                          ("CUDA context", CUDA_CONTEXT))
    host_parts = host_model_states(work) + (("rank runtime", work.ranks * RANK_RUNTIME),)
    return Estimate(gpu=sum(n for _, n in gpu_parts), host=sum(n for _, n in host_parts),
                    gpu_parts=gpu_parts, host_parts=host_parts)


def gpu_model_states(work: Workload) -> tuple[tuple[str, int], ...]:
    """Weights, gradients + optimizer states, and (ZeRO-3) the gathered layer, per GPU."""
    total, trainable, ranks, stage = work.shape.total, work.trainable, work.ranks, work.zero_stage
    weight_bytes = PRECISION_BYTES[work.precision]
    grad16, rest = _trainable_bytes(work.precision)
    offload_opt = work.offload_optimizer and stage >= 1
    if stage == 3:
        weights = 0 if work.offload_params else weight_bytes * total / ranks
        gathered = 4 * work.shape.largest_layer
    else:
        weights, gathered = weight_bytes * total, 0
    if offload_opt:
        optimizer = 0.0
    elif stage == 0:
        optimizer = (grad16 + rest) * trainable
    elif stage == 1:
        optimizer = grad16 * trainable + rest * trainable / ranks
    else:
        optimizer = (grad16 + rest) * trainable / ranks
    return (("weights", int(weights)), ("gradients and optimizer", int(optimizer)),
            ("gathered layer", int(gathered)))


def activations(work: Workload) -> int:
    """Activation memory per GPU for one micro-batch (Korthikanti et al. 2022, eq. 1)."""
    shape = work.shape
    tokens = work.micro_batch * work.seq_len
    scale = PRECISION_BYTES[work.precision] / 2  # eq. 1 counts 16-bit activations
    full_layer = 34 * tokens * shape.hidden * scale
    if work.gradient_checkpointing:
        layers = shape.layers * 2 * tokens * shape.hidden * scale + full_layer
    else:
        layers = shape.layers * full_layer
    head = tokens * shape.vocab * (PRECISION_BYTES[work.precision] + 4 + 4)
    return int(layers + head)


def host_model_states(work: Workload) -> tuple[tuple[str, int], ...]:
    """Host memory for loading and offloaded states, times DeepSpeed's buffer factor."""
    total, trainable, ranks = work.shape.total, work.trainable, work.ranks
    load_bytes = PRECISION_BYTES[work.load_precision or work.precision]
    if work.zero_stage == 3:
        per_rank = max(4 * work.shape.largest_layer, work.shard_bytes or 0)
    else:
        per_rank = total * load_bytes
    loading = ranks * per_rank
    offloaded = 0
    if work.offload_optimizer and work.zero_stage >= 1:
        offloaded += _trainable_bytes(work.precision)[1] * trainable
    if work.offload_params and work.zero_stage == 3:
        offloaded += PRECISION_BYTES[work.precision] * total
    return (("loading", int(loading * CPU_BUFFER_FACTOR)) if loading >= offloaded
            else ("offloaded states", int(offloaded * CPU_BUFFER_FACTOR)),)


def _trainable_bytes(precision: str) -> tuple[int, int]:
    """(16-bit gradient, everything else the optimizer keeps) per trainable parameter.

    Mixed precision: 2, and 4 (fp32 grad) + 4 (fp32 master) + 8 (Adam m, v) = 16.
    Pure fp32: the weights are the master copy; 4 (grad) and 8 (Adam): 0 and 12.
    """
    return (2, 16) if precision in ("bf16", "fp16") else (0, 12)

