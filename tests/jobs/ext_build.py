"""Acts like a torch JIT extension build: takes the build dir's `lock`, then dies mid-compile
(SIGKILL, as an OOM kill or a stop would). A later run that finds the lock would wait forever
in torch; this job says so and exits 3 instead, so the test can tell."""
import os
import signal
import sys
from pathlib import Path

build = Path(os.environ["TORCH_EXTENSIONS_DIR"]) / "py311_cpu" / "deepspeed_shm_comm"
build.mkdir(parents=True, exist_ok=True)
lock = build / "lock"
if lock.exists():
    print(f"ext_build: stale lock {lock}: a torch build would wait forever", flush=True)
    sys.exit(3)
if os.environ.get("EXT_BUILD_DONE_MARK") and Path(os.environ["EXT_BUILD_DONE_MARK"]).exists():
    print("ext_build: built without waiting", flush=True)
    sys.exit(0)
os.close(os.open(lock, os.O_CREAT | os.O_EXCL))
Path(os.environ["EXT_BUILD_DONE_MARK"]).touch()
print("ext_build: compiling", flush=True)
os.kill(os.getpid(), signal.SIGKILL)
