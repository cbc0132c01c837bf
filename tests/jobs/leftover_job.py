"""Jobs whose processes outlive a SIGKILLed supervisor, each hard to find in its own way.

Every process of the job writes `PID START` (START: field 22 of /proc/PID/stat, so a
test never mistakes a newcomer that reused the pid) to a file named after its pid in
--pids, and none obeys SIGTERM: only guardrun's SIGKILL ends them, so a process alive
after the next run started is one the cleanup missed. --pids/ready appears once the
job is set up.

--shape fork-on-term     every SIGTERM makes the process fork a new child (which does
                         the same): children born after the scan that found their parent.
--shape bare-worker      the launcher starts a worker with an empty environment (no
                         guardrun mark) in the launcher's session and group, then dies of the SIGTERM
                         PR_SET_PDEATHSIG sends: the worker is orphaned, and only the
                         recorded launcher's session and process group still name it.
--shape rank-bare-worker the launcher (dies of SIGTERM) starts a marked rank in a new
                         session (torchrun's way), which starts a worker with an empty
                         environment in yet another session: only the parent chain from
                         the rank names the worker.
--role probe --out FILE  the next run's job: writes to FILE the recorded processes that
                         are alive as it starts, then exits 0.
"""
import argparse
import json
import os
import signal
import subprocess
import sys
import time

ME = os.path.abspath(__file__)


def start_time(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/stat", "rb") as handle:
            fields = handle.read().rsplit(b")", 1)[1].split()
    except (FileNotFoundError, ProcessLookupError):
        return None
    return None if fields[0] in (b"Z", b"X") else int(fields[19])


def record(pids: str) -> None:
    pid = os.getpid()
    path = os.path.join(pids, str(pid))
    # SIGTERM held off meanwhile: a child forked by the handler mid-record would carry on
    # in this frame, writing this pid's line into this file a second time (seen here).
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})
    try:
        with open(path + ".tmp", "w") as handle:
            handle.write(f"{pid} {start_time(pid)}")
        os.rename(path + ".tmp", path)
    finally:
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGTERM})


def recorded(pids: str) -> list[tuple[int, int]]:
    out = []
    for name in os.listdir(pids):
        if name.isdigit():
            with open(os.path.join(pids, name)) as handle:
                pid, start = handle.read().split()
            out.append((int(pid), int(start)))
    return sorted(out)


def forever() -> None:
    while True:
        time.sleep(60)


def fork_on_term(pids: str) -> None:
    def on_term(_signum, _frame):
        if os.fork() == 0:
            record(pids)  # the child inherits this handler and runs the same loop
    signal.signal(signal.SIGTERM, on_term)


def wait_for_file(path: str) -> None:
    while not os.path.exists(path):
        time.sleep(0.01)


def spawn_self(role: str, pids: str, *, env: dict | None, new_session: bool) -> int:
    child = subprocess.Popen([sys.executable, ME, "--role", role, "--pids", pids], env=env,
                             start_new_session=new_session, stdin=subprocess.DEVNULL)
    wait_for_file(os.path.join(pids, str(child.pid)))
    return child.pid


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--pids", required=True)
    parser.add_argument("--shape", default="")
    parser.add_argument("--role", default="launcher")
    parser.add_argument("--out")
    args = parser.parse_args()
    if args.role == "probe":
        alive = [[pid, start] for pid, start in recorded(args.pids) if start_time(pid) == start]
        with open(args.out, "w") as handle:
            json.dump(alive, handle)
        print("probe: done", flush=True)
        return
    if args.role in ("worker", "rank"):
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        if args.role == "rank":  # its worker first: once the rank is recorded, both are
            spawn_self("worker", args.pids, env={}, new_session=True)
        record(args.pids)
        forever()
    record(args.pids)  # the launcher
    if args.shape == "fork-on-term":
        fork_on_term(args.pids)
    elif args.shape == "bare-worker":
        spawn_self("worker", args.pids, env={}, new_session=False)
    elif args.shape == "rank-bare-worker":
        spawn_self("rank", args.pids, env=None, new_session=True)
    else:
        sys.exit(f"unknown shape {args.shape!r}")
    open(os.path.join(args.pids, "ready"), "w").close()
    print("ready", flush=True)
    forever()


if __name__ == "__main__":
    main()
