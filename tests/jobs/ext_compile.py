"""Acts like a rank that JIT-compiles a torch extension (torch.utils.cpp_extension.load).

The rank takes the build folder's `lock` the way torch's FileBaton does (O_CREAT|O_EXCL,
an empty file, closed at once), then waits on its compiler: a fake `cc1plus` (this
interpreter run through a symlink of that name, so /proc/PID/comm and argv[0] both say
cc1plus) whose cwd is the build folder, as ninja's children's is. The compiler holds
--compile-mb of touched memory (a real DeepSpeed shm_comm build: ~3 GiB for ~30 s here)
and waits to be stopped.

--name: the extension (default deepspeed_shm_comm); --bin: where to put the symlink;
--go FILE: the compiler takes its memory only once FILE exists (the test decides when);
--source PATH: more compiler arguments (the sources and outputs a real one is given).
The build folder is $TORCH_EXTENSIONS_DIR/<name>, torch's layout when that is set.
"""
import argparse
import os
import subprocess
import sys
from pathlib import Path

HOLD = """
import os, sys, time
while sys.argv[2] and not os.path.exists(sys.argv[2]):
    time.sleep(0.02)
held = [b"\\x01" * (1 << 20) for _ in range(int(sys.argv[1]))]
print("cc1plus: compiling", flush=True)
while True:
    time.sleep(60)
"""


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--name", default="deepspeed_shm_comm")
    parser.add_argument("--bin", required=True)
    parser.add_argument("--compile-mb", type=int, default=300)
    parser.add_argument("--go", default="")
    parser.add_argument("--source", action="append", default=[])
    args = parser.parse_args()
    build = Path(os.environ["TORCH_EXTENSIONS_DIR"]) / args.name
    build.mkdir(parents=True, exist_ok=True)
    os.close(os.open(build / "lock", os.O_CREAT | os.O_EXCL | os.O_WRONLY))
    compiler = Path(args.bin) / "cc1plus"
    compiler.parent.mkdir(parents=True, exist_ok=True)
    if not compiler.exists():
        compiler.symlink_to(sys.executable)
    print(f"ext_compile: building {args.name}", flush=True)
    argv = [str(compiler), "-c", HOLD, str(args.compile_mb), args.go, *args.source]
    child = subprocess.Popen(argv, cwd=build)
    sys.exit(child.wait())


if __name__ == "__main__":
    main()
