"""A job that prints a lot while its memory grows, for the stalled-terminal tests.

A printer thread writes `global_step=N/...` lines (parsed as progress) as fast as
--lines-per-s allows; the main thread grows anonymous memory like grow.py. When the
printer blocks on a full pipe (its reader, guardrun, stopped reading) the growth goes
on: a stalled supervisor cannot hide behind a job that stalls with it.

The job's own times go to --marks (CLOCK_MONOTONIC, shared by every process): `started`,
`crossed MARK_MB` when its anonymous memory first reaches --mark-mb, `term` when SIGTERM
arrives (it then exits at once, without flushing a stdout nobody may read).
"""
import argparse
import os
import signal
import threading
import time

PAGE = os.sysconf("SC_PAGE_SIZE")


def anon_bytes() -> int:
    with open("/proc/self/statm") as handle:
        _size, resident, shared = map(int, handle.read().split()[:3])
    return (resident - shared) * PAGE


def mark(path: str, text: str) -> None:
    with open(path, "a") as handle:
        handle.write(f"{text} {time.monotonic():.6f}\n")


def printer(lines_per_s: int) -> None:
    batch = max(1, lines_per_s // 100)
    pad = "x" * 60
    step = 0
    while True:
        began = time.monotonic()
        chunk = []
        for _ in range(batch):
            step += 1
            chunk.append(f"global_step={step}/100000000 {pad}\n")
        try:
            os.write(1, "".join(chunk).encode())
        except OSError:
            return
        time.sleep(max(0.0, 0.01 - (time.monotonic() - began)))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--marks", required=True)
    parser.add_argument("--mark-mb", type=int, required=True)
    parser.add_argument("--start-after", type=float, default=1.0, help="seconds of printing before growing")
    parser.add_argument("--lines-per-s", type=int, default=20000)
    parser.add_argument("--chunk-mb", type=int, default=8)
    parser.add_argument("--every", type=float, default=0.02)
    parser.add_argument("--max-mb", type=int, default=1024)
    args = parser.parse_args()

    def on_term(_signum, _frame):
        mark(args.marks, "term")
        os._exit(143)
    signal.signal(signal.SIGTERM, on_term)
    mark(args.marks, "started")
    threading.Thread(target=printer, args=(args.lines_per_s,), daemon=True).start()
    time.sleep(args.start_after)  # long enough for the reader's pipe and guardrun's buffer to fill
    held, marked = [], False
    while True:
        for _ in range(args.chunk_mb):
            if len(held) >= args.max_mb:
                break
            held.append(b"\x01" * (1 << 20))
            if not marked and anon_bytes() >= args.mark_mb << 20:
                marked = True
                mark(args.marks, f"crossed {args.mark_mb}")
        time.sleep(args.every)


if __name__ == "__main__":
    main()
