"""What validating a checkpoint folder costs: guardrun's header checks against reading one.

Builds a folder of HF-style checkpoints whose big files are sparse (so 20 GB take no
disk): each has model.safetensors with a real header, optimizer.pt ending in a zip
end-of-central-directory record, trainer_state.json and scheduler.pt. The newest is
half-written (no trainer_state.json) and one older has a truncated safetensors file.
Then, interleaved over several rounds: checkpoints.find (every checkpoint validated)
against a plain full read of one checkpoint's files, the least any loader does. Time
and bytes read (rchar, /proc/self/io) for each. Exits 1 if find misjudges one.

    python bench/checkpoints.py [--count 50] [--total-gb 20] [--rounds 5]
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

from guardrun.launcher import checkpoints

MIB = 1 << 20


def rchar() -> int:
    with open("/proc/self/io") as handle:
        for line in handle:
            if line.startswith("rchar:"):
                return int(line.split()[1])
    raise RuntimeError("no rchar in /proc/self/io")


def sparse_safetensors(path: Path, size: int) -> None:
    header = json.dumps({"w": {"dtype": "F32", "shape": [(size - 4096) // 4],
                               "data_offsets": [0, (size - 4096) // 4 * 4]}}).encode()
    with open(path, "wb") as handle:
        handle.write(len(header).to_bytes(8, "little") + header)
        handle.truncate(8 + len(header) + (size - 4096) // 4 * 4)


def sparse_torch_zip(path: Path, size: int) -> None:
    with open(path, "wb") as handle:
        handle.write(b"PK\x03\x04")
        handle.seek(size - 22)
        handle.write(b"PK\x05\x06" + b"\0" * 18)


def build(root: Path, count: int, per_checkpoint: int) -> None:
    for index in range(count):
        step = (index + 1) * 100
        path = root / f"checkpoint-{step}"
        path.mkdir()
        sparse_safetensors(path / "model.safetensors", per_checkpoint * 2 // 5)
        sparse_torch_zip(path / "optimizer.pt", per_checkpoint * 3 // 5)
        sparse_torch_zip(path / "scheduler.pt", 1024)
        if index < count - 1:  # the newest is half-written
            (path / "trainer_state.json").write_text(json.dumps({"global_step": step}))
    broken = root / f"checkpoint-{(count // 2) * 100}" / "model.safetensors"
    with open(broken, "r+b") as handle:
        handle.truncate(broken.stat().st_size - MIB)


def full_read(path: Path) -> None:
    for file in sorted(path.iterdir()):
        with open(file, "rb") as handle:
            while handle.read(16 * MIB):
                pass


def measure(action) -> tuple[float, int]:
    before, started = rchar(), time.perf_counter()
    action()
    return time.perf_counter() - started, rchar() - before


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=50)
    parser.add_argument("--total-gb", type=float, default=20.0)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    per_checkpoint = int(args.total_gb * (1 << 30) / args.count)
    with tempfile.TemporaryDirectory(prefix="guardrun-bench-ckpt-") as temp:
        root = Path(temp)
        build(root, args.count, per_checkpoint)
        apparent = sum(f.stat().st_size for f in root.rglob("*") if f.is_file())
        found: list = []
        one = root / "checkpoint-100"
        finds, reads = [], []
        for _ in range(args.rounds):
            finds.append(measure(lambda: found.__setitem__(slice(None), checkpoints.find(root))))
            reads.append(measure(lambda: full_read(one)))
        invalid = {c.name: c.reason for c in found if not c.valid}
        expected = {f"checkpoint-{args.count * 100}", f"checkpoint-{(args.count // 2) * 100}"}
        find_s = statistics.median(t for t, _ in finds)
        read_s = statistics.median(t for t, _ in reads)
        find_b = max(b for _, b in finds)
        read_b = max(b for _, b in reads)
        print(f"checkpoint folder: {args.count} checkpoints, {apparent / (1 << 30):.1f} GiB apparent "
              f"(sparse), median of {args.rounds} interleaved rounds\n")
        print("| what | time | bytes read |")
        print("|---|---:|---:|")
        print(f"| guardrun: find + validate all {args.count} | {find_s * 1000:.1f} ms | {find_b / 1024:.1f} KiB |")
        print(f"| full read of one checkpoint ({per_checkpoint / (1 << 30):.2f} GiB) | {read_s * 1000:.1f} ms "
              f"| {read_b / MIB:.0f} MiB |")
        print(f"| ratio (full read of one / validate all) | {read_s / find_s:.0f}x | {read_b / max(find_b, 1):.0f}x |")
        print(f"\ntargets: validate all < 0.5 s: {'met' if find_s < 0.5 else 'MISSED'}; "
              f"< 1 MB read: {'met' if find_b < 1e6 else 'MISSED'}")
        print("(the files are sparse, so the full read copies zeros from the page cache: on a "
              "real disk it costs far more; the bytes column is the fair comparison)")
        for name, reason in sorted(invalid.items()):
            print(f"invalid: {name}: {reason}")
        if set(invalid) != expected:
            print(f"WRONG: expected exactly {sorted(expected)} invalid", file=sys.stderr)
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
