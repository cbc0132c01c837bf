"""A job that waits for a file before it finishes, so a test decides when it ends.

It prints `waiting for PATH` (every rank's line prefixed `[rankR]` with --ranks), then,
once PATH exists, a few Hugging Face-style loss lines and `done`, and exits 0.

--ignore-term: SIGTERM is noted (in --term-file, and printed), not obeyed: a launcher
  that survives the SIGTERM PR_SET_PDEATHSIG sends when its supervisor dies.
--show-env NAME: print whether NAME is in the job's environment.
Printing never kills it: once its supervisor is gone its stdout is a broken pipe.
"""
import argparse
import os
import signal
import sys
import time


def say(text: str) -> None:
    try:
        print(text, flush=True)
    except OSError:  # EPIPE: nobody reads our output any more
        pass


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--go", required=True)
    parser.add_argument("--ranks", type=int, default=0)
    parser.add_argument("--ignore-term", action="store_true")
    parser.add_argument("--term-file")
    parser.add_argument("--show-env", action="append", default=[])
    args = parser.parse_args()

    def on_term(_signum, _frame):
        if args.term_file:
            with open(args.term_file, "w") as handle:
                handle.write(str(os.getpid()))
        say("got SIGTERM")
        if not args.ignore_term:
            sys.exit(143)
    signal.signal(signal.SIGTERM, on_term)

    for name in args.show_env:
        say(f"env {name}: {'set' if name in os.environ else 'unset'}")
    prefixes = [f"[rank{r}] " for r in range(args.ranks)] or [""]
    for prefix in prefixes:
        say(f"{prefix}waiting for {args.go} (pid {os.getpid()})")
    while not os.path.exists(args.go):
        time.sleep(0.02)
    for step in range(1, 4):
        for prefix in prefixes:
            say(f"{prefix}{{'loss': {1.0 / step:.4f}, 'grad_norm': 0.5, 'epoch': {step}}}")
    say("done")


if __name__ == "__main__":
    main()
