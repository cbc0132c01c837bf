"""A tiny "trainer" that really runs out of CUDA memory above some micro-batch (tests/gpu).

Each step allocates one activation buffer per sample, each --sample-fraction of the
card (0.1: 7.96 GiB on an H100 80GB), so a micro-batch of 16 needs 160% of the card and
dies with torch.OutOfMemoryError after filling it, while 8 needs 80% and trains. The
size follows the card, so the same recipe works on an 80 GB or a 141 GB GPU. It prints
Hugging Face style log lines so guardrun sees progress.
"""
import argparse
import time

import torch


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--per_device_train_batch_size", type=int, required=True)
    parser.add_argument("--gradient_accumulation_steps", type=int, default=1)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--sample-fraction", type=float, default=0.1)
    args = parser.parse_args()
    _free, total = torch.cuda.mem_get_info()
    per_sample = int(total * args.sample_fraction)
    batch = args.per_device_train_batch_size
    print(f"micro-batch {batch} x accumulation {args.gradient_accumulation_steps}: "
          f"{batch * per_sample / 2**30:.1f} GiB of activations on a {total / 2**30:.1f} GiB card", flush=True)
    for step in range(1, args.steps + 1):
        for _micro in range(args.gradient_accumulation_steps):
            activations = []
            for _sample in range(batch):  # fills the card sample by sample, as a forward pass does
                buffer = torch.empty(per_sample, dtype=torch.uint8, device="cuda")
                buffer.fill_(1)
                activations.append(buffer)
            torch.cuda.synchronize()
            del activations
        loss = 1.0 / step
        print({"loss": round(loss, 4), "grad_norm": 0.5, "epoch": round(step / args.steps, 2)}, flush=True)
        print(f"step {step}/{args.steps}", flush=True)
        time.sleep(0.05)
    print("training done", flush=True)


if __name__ == "__main__":
    main()
