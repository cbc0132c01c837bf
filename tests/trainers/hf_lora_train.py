"""A real Hugging Face Trainer job for guardrun's tests: tiny random Llama + PEFT LoRA, no downloads.

The command line is the real one: every ``TrainingArguments`` flag works (``--output_dir``,
``--per_device_train_batch_size``, ``--gradient_accumulation_steps``, ``--learning_rate``,
``--max_steps``, ``--save_steps``, ``--resume_from_checkpoint``, ``--deepspeed``,
``--gradient_checkpointing``, ``--save_only_model``, ``--logging_steps``, ``--report_to``,
``--use_cpu`` ...). Run it as::

    python tests/trainers/hf_lora_train.py --output_dir D --use_cpu --max_steps 10 --report_to none
    python -m torch.distributed.run --nproc-per-node 2 tests/trainers/hf_lora_train.py --output_dir D ...
    deepspeed --num_gpus 2 tests/trainers/hf_lora_train.py --deepspeed tests/trainers/ds_zero3.json ...

On top, test knobs that make it fail the ways real jobs fail (see ``Knobs``):

* ``--ballast_mb N --ballast_ramp_steps K``: host memory each rank holds, ramping with the global step;
  a resumed run takes the memory of its resume step at once.
* ``--stall_in_save_at STEP``: the save of ``checkpoint-STEP`` hangs after the weights (and the
  optimizer, unless ``--save_only_model``) are written and before ``trainer_state.json``; only on the
  first attempt (not when env ``GUARDRUN_ATTEMPT`` > 1). Only the rank that writes
  ``trainer_state.json`` stalls; the others block in the next collective.
* ``--step_seconds T``: sleep after each optimizer step, so a supervisor can watch the ramp.
* ``--abort_in_teardown_rank R``: after ``trainer.train()`` returned (the last checkpoint saved), rank R
  calls ``os.abort()`` on its way out, as a rank dying in teardown does (issue 13: torchrun's
  ChildFailedError after ``30/30``).
* ``--oom_above_batch N``: ``per_device_train_batch_size > N`` raises ``torch.OutOfMemoryError`` with
  torch's CUDA message at the first training step.
* ``--nan_at_step S [--nan_lr_above X]``: from global step S on, the loss is NaN while the configured
  ``--learning_rate`` is above X, so a relaunch with a smaller learning rate cures it. Note the real
  Trainer default ``--logging_nan_inf_filter true`` hides NaN losses in the ``'loss'`` log value
  (``'grad_norm'`` still shows ``nan``); pass ``--logging_nan_inf_filter false`` to see ``'loss': 'nan'``.
"""
from __future__ import annotations

import os

os.environ["HF_HUB_OFFLINE"] = "1"          # never download anything
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import sys
import time
from dataclasses import dataclass, field

import torch
from peft import LoraConfig, get_peft_model
from transformers import (
    HfArgumentParser,
    LlamaConfig,
    LlamaForCausalLM,
    Trainer,
    TrainerCallback,
    TrainingArguments,
    set_seed,
)
from transformers.trainer_utils import get_last_checkpoint

MIB = 1 << 20

# torch's own wording (c10/cuda/CUDACachingAllocator.cpp, torch >= 2.1); parsers match on it.
OOM_MESSAGE = (
    "CUDA out of memory. Tried to allocate 2.00 GiB. GPU 0 has a total capacity of 79.10 GiB of which "
    "1.06 GiB is free. Process 4242 has 78.03 GiB memory in use. Of the allocated memory 76.51 GiB is "
    "allocated by PyTorch, and 1.02 GiB is reserved by PyTorch but unallocated. If reserved but unallocated "
    "memory is large try setting PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True to avoid fragmentation.  "
    "See documentation for Memory Management  (https://pytorch.org/docs/stable/notes/cuda.html#environment-variables)"
)


@dataclass
class Knobs:
    """Test knobs; everything else on the command line is a real TrainingArguments flag."""

    ballast_mb: float = field(default=0.0, metadata={"help": "host MiB each rank holds after the ramp"})
    ballast_ramp_steps: int = field(default=10, metadata={"help": "global steps for the ballast to reach full size"})
    stall_in_save_at: int = field(default=-1, metadata={"help": "hang while saving checkpoint-STEP, before trainer_state.json (first attempt only)"})
    oom_above_batch: int = field(default=-1, metadata={"help": "raise torch.OutOfMemoryError if per_device_train_batch_size > N"})
    nan_at_step: int = field(default=-1, metadata={"help": "NaN loss from this global step on ..."})
    nan_lr_above: float = field(default=0.0, metadata={"help": "... while --learning_rate > this"})
    step_seconds: float = field(default=0.0, metadata={"help": "sleep after each optimizer step, so a supervisor can watch"})
    num_samples: int = field(default=512, metadata={"help": "synthetic dataset size"})
    abort_in_teardown_rank: int = field(default=-1, metadata={"help": "this rank calls os.abort() after training"})
    seq_len: int = field(default=16, metadata={"help": "tokens per sample"})


VOCAB = 128


class TokenDataset(torch.utils.data.Dataset):
    """Deterministic token sequences: sample i is an arithmetic progression mod VOCAB seeded by i."""

    def __init__(self, n: int, seq_len: int, seed: int):
        self.n, self.seq_len, self.seed = n, seq_len, seed

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + i)
        start = int(torch.randint(0, VOCAB, (1,), generator=g))
        stride = int(torch.randint(1, 4, (1,), generator=g))
        ids = (start + stride * torch.arange(self.seq_len)) % VOCAB
        return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": ids.clone()}


class Ballast:
    """Resident host memory: 1 MiB chunks filled with non-zero bytes (no lazily zero-mapped pages)."""

    def __init__(self, full_mb: float, ramp_steps: int):
        self.full_mb, self.ramp_steps = max(0.0, full_mb), max(1, ramp_steps)
        self.chunks: list[bytearray] = []

    def grow_to(self, step: int) -> None:
        target = int(round(self.full_mb * min(1.0, step / self.ramp_steps)))
        while len(self.chunks) < target:
            self.chunks.append(bytearray(b"\xa5") * MIB)


class BallastCallback(TrainerCallback):
    def __init__(self, ballast: Ballast, step_seconds: float = 0.0):
        self.ballast, self.step_seconds = ballast, step_seconds

    def on_step_begin(self, args, state, control, **kwargs):
        # state.global_step is the number of finished steps: the one starting now is +1. After a
        # resume this is the first call, and it takes the whole ballast of that step at once.
        self.ballast.grow_to(state.global_step + 1)

    def on_step_end(self, args, state, control, **kwargs):
        self.ballast.grow_to(state.global_step)
        if self.step_seconds > 0:
            time.sleep(self.step_seconds)


def attempt_number() -> int:
    try:
        return int(os.environ.get("GUARDRUN_ATTEMPT", "1"))
    except ValueError:
        return 1


class KnobTrainer(Trainer):
    def __init__(self, *a, knobs: Knobs, **kw):
        super().__init__(*a, **kw)
        self.knobs = knobs

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        k, args = self.knobs, self.args
        if 0 <= k.oom_above_batch < args.per_device_train_batch_size:
            raise torch.OutOfMemoryError(OOM_MESSAGE)
        out = super().compute_loss(model, inputs, return_outputs=return_outputs, num_items_in_batch=num_items_in_batch)
        step = self.state.global_step + 1          # the optimizer step this micro-batch belongs to
        if 0 <= k.nan_at_step <= step and args.learning_rate > k.nan_lr_above:
            if return_outputs:
                loss, outputs = out
                return loss * float("nan"), outputs
            return out * float("nan")
        return out

    def _save_checkpoint(self, model, trial):
        k = self.knobs
        if k.stall_in_save_at >= 0 and self.state.global_step == k.stall_in_save_at and attempt_number() <= 1:
            state = self.state

            def stall(json_path):
                print(f"[hf_lora_train] stalling in save of checkpoint-{state.global_step} before "
                      f"{os.path.basename(json_path)} (pid {os.getpid()})", flush=True)
                while True:
                    time.sleep(1)

            state.save_to_json = stall         # instance attribute: only this save, only the writing rank
        return super()._save_checkpoint(model, trial)


def fix_cpu_deepspeed_world_size() -> None:
    """accelerate (1.15) finds no backend without an accelerator, and then counts 1 process even though
    DeepSpeed's launcher started several and deepspeed.comm joined them over gloo: TrainingArguments'
    world_size stays 1 and the "auto" train_batch_size comes out as micro*accum*1: DeepSpeed's batch
    assertion fails ("4 != 4 * 1 * 2"). Name the backend DeepSpeed uses on CPU (gloo), so the Trainer
    sees the real world size, as it does on GPUs."""
    if torch.cuda.is_available():
        return
    from accelerate.state import PartialState

    original = PartialState._prepare_backend

    def _prepare_backend(self, cpu=False, sagemaker_dp=False, backend=None):
        backend, distributed_type = original(self, cpu, sagemaker_dp, backend)
        if (backend is None and not cpu and int(os.environ.get("LOCAL_RANK", -1)) != -1
                and os.environ.get("ACCELERATE_USE_DEEPSPEED", "false").lower() == "true"):
            backend = "gloo"
        return backend, distributed_type

    PartialState._prepare_backend = _prepare_backend


def main():
    # Without a GPU, the Trainer (accelerate) forms a process group only with --use_cpu: under torchrun
    # each rank would otherwise train alone, all writing the same output_dir. Do what --use_cpu does
    # (not with --deepspeed, which needs accelerate's DeepSpeed path and brings its own CPU backend).
    if (int(os.environ.get("WORLD_SIZE", "1")) > 1 and not torch.cuda.is_available()
            and not any(a == "--deepspeed" or a.startswith("--deepspeed=") for a in sys.argv[1:])):
        os.environ["ACCELERATE_USE_CPU"] = "true"
    fix_cpu_deepspeed_world_size()
    parser = HfArgumentParser((TrainingArguments, Knobs))
    if len(sys.argv) == 2 and sys.argv[1].endswith(".json"):
        args, knobs = parser.parse_json_file(os.path.abspath(sys.argv[1]))
    else:
        args, knobs = parser.parse_args_into_dataclasses()

    set_seed(args.seed)
    config = LlamaConfig(
        vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=max(64, knobs.seq_len),
        pad_token_id=0, bos_token_id=1, eos_token_id=2, tie_word_embeddings=False,
    )
    # from_config (not the constructor) so that ZeRO-3's zero.Init applies when --deepspeed is stage 3.
    model = LlamaForCausalLM._from_config(config, dtype=torch.float32)
    if args.gradient_checkpointing:
        model.enable_input_require_grads()
    model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0,
                                             target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM"))

    resume = args.resume_from_checkpoint
    if isinstance(resume, str) and resume.lower() in ("true", "last", "latest"):
        resume = get_last_checkpoint(args.output_dir)   # None when there is none: start fresh

    trainer = KnobTrainer(
        model=model,
        args=args,
        train_dataset=TokenDataset(knobs.num_samples, knobs.seq_len, args.seed),
        callbacks=[BallastCallback(Ballast(knobs.ballast_mb, knobs.ballast_ramp_steps), knobs.step_seconds)],
        knobs=knobs,
    )
    if trainer.is_world_process_zero():
        print(f"[hf_lora_train] world_size={args.world_size} per_device={args.per_device_train_batch_size} "
              f"grad_accum={args.gradient_accumulation_steps} "
              f"global_batch={args.per_device_train_batch_size * args.gradient_accumulation_steps * args.world_size} "
              f"lr={args.learning_rate} deepspeed={args.deepspeed} resume_from={resume} "
              f"attempt={attempt_number()}", flush=True)
    trainer.train(resume_from_checkpoint=resume)
    if trainer.is_world_process_zero():
        print(f"[hf_lora_train] finished at step {trainer.state.global_step}", flush=True)
    if args.process_index == knobs.abort_in_teardown_rank:
        os.abort()


if __name__ == "__main__":
    main()
