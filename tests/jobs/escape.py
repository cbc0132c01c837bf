"""A job whose worker escapes every /proc handle: setsid, a double fork, an empty environment.

The launcher forks a child that starts a session of its own and forks the worker, then
exits, so the worker's parent is gone; the worker re-execs itself with an empty
environment (no GUARDRUN_JOB_DIR, no test tag) and sleeps, after writing its pid to
--pidfile. The launcher then sleeps too, or exits 0 at once when --done names a file
that exists (the same recipe's next run).
"""
import argparse
import os
import sys
import time


def worker(pidfile: str) -> None:
    with open(pidfile + ".tmp", "w") as handle:
        handle.write(str(os.getpid()))
    os.rename(pidfile + ".tmp", pidfile)
    while True:
        time.sleep(1)


def main() -> None:
    if len(sys.argv) == 3 and sys.argv[1] == "--worker":
        worker(sys.argv[2])
        return
    parser = argparse.ArgumentParser()
    parser.add_argument("--pidfile", required=True)
    parser.add_argument("--done", required=True)
    args = parser.parse_args()
    if os.path.exists(args.done):
        print("nothing left to do", flush=True)
        return
    if os.fork() == 0:  # the child: a session of its own, then the worker, then gone
        os.setsid()
        if os.fork() == 0:
            os.execve(sys.executable, [sys.executable, os.path.abspath(__file__), "--worker",
                                       args.pidfile], {})
        os._exit(0)
    os.wait()
    print("worker started", flush=True)
    while True:
        time.sleep(1)


if __name__ == "__main__":
    main()
