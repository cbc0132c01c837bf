"""Acts like a torch JIT extension build killed mid-compile: takes the build dir's `lock`
(as torch's FileBaton does), starts its `ninja` (argv[0] ninja, cwd the build dir, as
torch.utils.cpp_extension runs it), then dies by SIGKILL, as an OOM kill of the rank would.
The orphaned ninja keeps compiling, as a real one does. A later run that finds the lock
would wait forever in torch; this job says so and exits 3 instead, so the test can tell."""
import os
import signal
import subprocess
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
subprocess.Popen(["ninja", "-c", "import time; time.sleep(120)"], executable=sys.executable, cwd=build)
print("ext_build: compiling", flush=True)
os.kill(os.getpid(), signal.SIGKILL)
