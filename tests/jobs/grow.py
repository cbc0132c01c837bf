"""A job that grows its anonymous memory in steps, for the supervisor's tests.

It prints, with CLOCK_MONOTONIC (shared by every process on the machine), when its
own anonymous memory first reaches --mark-mb and when SIGTERM arrives, so a test can
measure guardrun's reaction time from the job's side.
"""
import argparse
import os
import signal
import sys
import time

PAGE = os.sysconf("SC_PAGE_SIZE")


def anon_bytes() -> int:
    with open("/proc/self/statm") as handle:
        _size, resident, shared = map(int, handle.read().split()[:3])
    return (resident - shared) * PAGE


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--chunk-mb", type=int, default=32)
    parser.add_argument("--every", type=float, default=0.02)
    parser.add_argument("--mark-mb", type=int, required=True)
    parser.add_argument("--max-mb", type=int, default=2048)
    parser.add_argument("--ignore-term", action="store_true")
    args = parser.parse_args()

    def on_term(_signum, _frame):
        print(f"got SIGTERM at {time.monotonic():.6f}", flush=True)
        if not args.ignore_term:
            sys.exit(143)
    signal.signal(signal.SIGTERM, on_term)

    held, marked = [], False
    while True:
        # A chunk is touched 1 MiB at a time, the mark checked after each: the job sees
        # its own crossing within 1 MiB, before any outside sampler can act on it.
        for _ in range(args.chunk_mb):
            if len(held) >= args.max_mb:
                break
            held.append(b"\x01" * (1 << 20))  # touched: really resident
            if not marked and anon_bytes() >= args.mark_mb << 20:
                marked = True
                print(f"crossed {args.mark_mb} MiB at {time.monotonic():.6f}", flush=True)
        time.sleep(args.every)


if __name__ == "__main__":
    main()
