"""The test trainer (tests/trainers/hf_lora_train.py) with per-rank data shards.

Each rank opens `<shard_dir>/shard-<RANK>.jsonl` (as jobs that give every rank its own
shard list do) before it runs the trainer unchanged. The bench leaves shard-1 out: rank 1
dies of a real FileNotFoundError while rank 0 goes on into the Trainer and waits for rank 1
at the process group, so the one error that matters is printed by one rank only.

    torchrun --nproc-per-node 2 bench/jobs/sharded_lora_train.py --shard_dir D <trainer flags>
"""
import os
import runpy
import sys
from pathlib import Path

TRAINER = Path(__file__).resolve().parents[2] / "tests" / "trainers" / "hf_lora_train.py"


def main() -> None:
    argv = sys.argv[1:]
    at = argv.index("--shard_dir")
    shard_dir = argv[at + 1]
    del argv[at:at + 2]
    rank = int(os.environ.get("RANK", "0"))
    with open(os.path.join(shard_dir, f"shard-{rank}.jsonl")) as handle:
        samples = sum(1 for _ in handle)
    print(f"[sharded] rank {rank}: {samples} samples in shard-{rank}.jsonl", flush=True)
    sys.argv = [str(TRAINER), *argv]
    runpy.run_path(str(TRAINER), run_name="__main__")


if __name__ == "__main__":
    main()
