"""torchrun job whose @record entry point raises on rank 1: it leaves a torchelastic error file."""
import os
import time

from torch.distributed.elastic.multiprocessing.errors import record


def load_config(rank: int) -> None:
    if rank == 1:
        raise ValueError("config key 'vision_tower' missing on rank 1")


@record
def main() -> None:
    rank = int(os.environ["RANK"])
    print(f"rank {rank} starting", flush=True)
    load_config(rank)
    time.sleep(30)


main()
