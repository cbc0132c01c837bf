"""A job whose GPU memory grows in steps, for the VRAM-limit check (tests/gpu).

Like tests/jobs/grow.py for host memory: it prints, with CLOCK_MONOTONIC (shared by every
process on the machine), when the GPU's used memory (total - free, the figure guardrun
reads from NVML) first reaches --mark-fraction of the card and when SIGTERM arrives, so
the test measures guardrun's reaction time from the job's side.
"""
import argparse
import signal
import sys
import time

import torch


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--mark-fraction", type=float, required=True)
    parser.add_argument("--max-fraction", type=float, default=0.85)
    parser.add_argument("--chunk-mib", type=int, default=256)
    parser.add_argument("--every", type=float, default=0.02)
    args = parser.parse_args()

    def on_term(_signum, _frame):
        print(f"got SIGTERM at {time.monotonic():.6f}", flush=True)
        sys.exit(143)
    signal.signal(signal.SIGTERM, on_term)

    free, total = torch.cuda.mem_get_info()
    print(f"card total {total} free {free}", flush=True)
    held, marked = [], False
    while True:
        free, total = torch.cuda.mem_get_info()
        if total - free < args.max_fraction * total:
            # cudaMalloc commits the memory when it returns: check the mark right after it,
            # before any outside sampler can have acted on this chunk.
            held.append(torch.empty(args.chunk_mib << 20, dtype=torch.uint8, device="cuda"))
            free, total = torch.cuda.mem_get_info()
            if not marked and total - free >= args.mark_fraction * total:
                marked = True
                print(f"crossed {args.mark_fraction:.0%} at {time.monotonic():.6f} used {total - free}", flush=True)
            held[-1].fill_(1)  # touched: really backed by device memory
            torch.cuda.synchronize()
        time.sleep(args.every)

if __name__ == "__main__":
    main()
