"""A plain argparse training script (no Hugging Face): it takes only its own flags.

Any flag it does not define ends it the way argparse ends every such script: exit 2 with
`error: unrecognized arguments`. Each step holds `--batch_size` × `--mb_per_sample` MiB
of touched memory (a micro-batch's activations); past `--gpu_budget_mb` it raises the
error a real CUDA run prints, so a CPU test can drive the cuda_oom rungs. Every attempt
appends JSON lines to `--record`: the flags it started with, then how it ended, the job's
own account that a test judges from.
"""
import argparse
import json
import sys
import time


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--batch_size", type=int, default=1)
    parser.add_argument("--accum", type=int, default=1)
    parser.add_argument("--mb_per_sample", type=int, default=1)
    parser.add_argument("--gpu_budget_mb", type=int, default=0)  # 0: no simulated GPU
    parser.add_argument("--grow_mb", type=int, default=0)  # host memory added per step
    parser.add_argument("--step_seconds", type=float, default=0.05)
    parser.add_argument("--record", required=True)
    parser.add_argument("--world_size", type=int, default=0)  # a tool that runs its own rank count
    args = parser.parse_args()
    if args.world_size:  # LLaMA-Factory's line, whatever NPROC_PER_NODE says
        print(f"Process rank: 0, world size: {args.world_size}, device: cpu", flush=True)
    entry = {"batch_size": args.batch_size, "accum": args.accum, "argv": sys.argv[1:]}
    _record(args.record, dict(entry, end="started"))
    need = args.batch_size * args.mb_per_sample
    if args.gpu_budget_mb and need > args.gpu_budget_mb:
        _record(args.record, dict(entry, end="cuda_oom"))
        print("Traceback (most recent call last):", flush=True)
        print(f"torch.OutOfMemoryError: CUDA out of memory. Tried to allocate {need} MiB", flush=True)
        sys.exit(1)
    held = []
    for step in range(1, args.steps + 1):
        batch = [b"\x01" * (1 << 20) for _ in range(need)]  # touched: really resident
        held += [b"\x01" * (1 << 20) for _ in range(args.grow_mb)]
        print(f"step {step}/{args.steps} loss {1.0 / step:.3f}", flush=True)
        del batch
        time.sleep(args.step_seconds)
    _record(args.record, dict(entry, end="finished", held_mb=len(held)))


def _record(path: str, entry: dict) -> None:
    with open(path, "a", encoding="utf-8") as handle:
        handle.write(json.dumps(entry) + "\n")


if __name__ == "__main__":
    main()
