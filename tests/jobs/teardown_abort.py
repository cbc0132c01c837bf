"""A torchrun job (gloo, CPU) that trains to its target, then a rank dies in teardown.

What issue 13 saw from a 2-rank HF run: `step 30/30`, checkpoint-30 saved, then a rank
aborts on the way out (torchrun's ChildFailedError, exit 1). Rank 0 logs `step N/M loss X`
and saves HF-style `checkpoint-N/` folders (a whole safetensors file, then
trainer_state.json with global_step and max_steps, written last as HF does); it resumes
from `--resume_from_checkpoint DIR` at that folder's global_step. Every optimizer step it
ever ran is appended to `--out/steps.log` (`attempt step`), so a test sees any step run twice
or past the target.

    python -m torch.distributed.run --nproc-per-node 2 teardown_abort.py --out D --max_steps 6
"""
from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import torch.distributed as dist


def save(out: Path, step: int, max_steps: int) -> None:
    folder = out / f"checkpoint-{step}"
    folder.mkdir(parents=True, exist_ok=True)
    header = b'{"__metadata__":{}}'
    (folder / "adapter_model.safetensors").write_bytes(len(header).to_bytes(8, "little") + header)
    state = {"global_step": step, "max_steps": max_steps, "log_history": []}
    (folder / "trainer_state.json").write_text(json.dumps(state))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--max_steps", type=int, required=True)
    parser.add_argument("--save_steps", type=int, default=2)
    parser.add_argument("--resume_from_checkpoint", type=Path, default=None)
    parser.add_argument("--abort_rank", type=int, default=1, help="this rank calls os.abort() in teardown")
    args = parser.parse_args()
    dist.init_process_group("gloo")
    rank = dist.get_rank()
    start = 0
    if args.resume_from_checkpoint is not None:
        start = json.loads((args.resume_from_checkpoint / "trainer_state.json").read_text())["global_step"]
    attempt = os.environ.get("GUARDRUN_ATTEMPT", "?")
    if rank == 0:
        args.out.mkdir(parents=True, exist_ok=True)
        print(f"[teardown_abort] world_size={dist.get_world_size()} start_step={start} attempt={attempt}",
              flush=True)
    for step in range(start + 1, args.max_steps + 1):
        dist.barrier()
        if rank == 0:
            with open(args.out / "steps.log", "a") as log:
                log.write(f"{attempt} {step}\n")
            print(f"step {step}/{args.max_steps} loss {1.0 / step:.4f}", flush=True)
            if step % args.save_steps == 0 or step == args.max_steps:
                save(args.out, step, args.max_steps)
    dist.barrier()
    if rank == 0:
        print(f"[teardown_abort] finished at step {args.max_steps}", flush=True)
    if rank == args.abort_rank:
        os.abort()  # a rank dying on the way out: "terminate called without an active exception"
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
