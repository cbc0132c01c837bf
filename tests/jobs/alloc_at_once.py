"""Each rank touches --mb MiB in one go (faster than any monitor interval), holds it for
--hold seconds, then exits 0: a spike only the kernel's limit can catch in time."""
import argparse
import os
import time

parser = argparse.ArgumentParser()
parser.add_argument("--mb", type=int, required=True)
parser.add_argument("--hold", type=float, default=1.0)
args = parser.parse_args()
world = os.environ.get("WORLD_SIZE", "1")
print(f"rank {os.environ.get('RANK', '0')} of {world}: allocating {args.mb} MiB at once", flush=True)
held = b"\x01" * (args.mb << 20)  # touched: really resident
time.sleep(args.hold)
print(f"rank {os.environ.get('RANK', '0')} of {world}: done", flush=True)
