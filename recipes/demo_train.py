"""guardrun's bundled demo trainer: small, but a real torch training loop.

Run it the way real jobs are run::

    python -m torch.distributed.run --standalone --nnodes 1 --nproc-per-node 2 \\
        recipes/demo_train.py --output_dir runs/demo
    python recipes/demo_train.py --output_dir runs/demo      # world size 1, no process group

What makes it useful to a supervisor:

* Hugging Face Trainer-style flags, log lines and checkpoints (``checkpoint-<step>/`` with the
  weights first and ``trainer_state.json`` last), so the same parsing code works on both.
* Deterministic synthetic data addressed by the global sample index: optimizer step ``s``
  (0-based) consumes samples ``[s*G, (s+1)*G)`` with ``G = per_device * grad_accum * world_size``,
  split across ranks and micro-steps. Keep ``G`` and the run is the same whatever the world size,
  so a relaunch on fewer ranks with more accumulation continues the same training.
* ``--ballast_mb``: host memory each rank holds (touched, resident), ramping with the global step,
  standing in for the model/optimizer state that makes too many ranks too big for the machine.
  Resuming at step ``s`` allocates the ballast for ``s`` at once (the resume spike).
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import random
import sys
import time

import torch
import torch.distributed as dist
from torch import nn

try:
    from torch.distributed.elastic.multiprocessing.errors import record
except ImportError:  # pragma: no cover - very old torch
    def record(fn):
        return fn

try:
    from safetensors.torch import load_file as _st_load, save_file as _st_save
except ImportError:  # the demo needs only torch; safetensors comes with transformers
    _st_load = _st_save = None

IN_FEATURES = 32
HIDDEN = 64
SAMPLES_PER_EPOCH = 256          # only used for the 'epoch' value in the logs
MAX_GRAD_NORM = 1.0              # HF TrainingArguments default
MIB = 1 << 20


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--output_dir", required=True)
    p.add_argument("--max_steps", type=int, default=30)
    p.add_argument("--per_device_train_batch_size", type=int, default=4)
    p.add_argument("--gradient_accumulation_steps", type=int, default=1)
    p.add_argument("--learning_rate", type=float, default=1e-2)
    p.add_argument("--save_steps", type=int, default=5)
    p.add_argument("--resume_from_checkpoint", default=None, metavar="PATH")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--ballast_mb", type=float, default=0.0,
                   help="host MiB each rank holds once the ramp is done")
    p.add_argument("--ballast_ramp_steps", type=int, default=10,
                   help="global steps over which the ballast grows linearly to --ballast_mb")
    p.add_argument("--step_seconds", type=float, default=0.1,
                   help="sleep per optimizer step, so a supervisor can watch the run")
    p.add_argument("--dist_timeout_s", type=float, default=120.0,
                   help="timeout of the gloo process group's collectives")
    args = p.parse_args(argv)
    for name in ("max_steps", "per_device_train_batch_size", "gradient_accumulation_steps", "save_steps"):
        if getattr(args, name) < 1:
            p.error(f"--{name} must be >= 1")
    return args


class Ballast:
    """Host memory that is really resident: 1 MiB chunks filled with non-zero bytes."""

    def __init__(self, full_mb: float, ramp_steps: int):
        self.full_mb = max(0.0, full_mb)
        self.ramp_steps = max(1, ramp_steps)
        self._chunks: list[bytearray] = []

    def target_mb(self, step: int) -> int:
        return int(round(self.full_mb * min(1.0, step / self.ramp_steps)))

    def grow_to(self, step: int) -> None:
        target = self.target_mb(step)
        while len(self._chunks) < target:
            # bytearray * n writes every byte: no lazily zero-mapped pages.
            self._chunks.append(bytearray(b"\xa5") * MIB)

    @property
    def held_mb(self) -> int:
        return len(self._chunks)


class Model(nn.Module):
    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(IN_FEATURES, HIDDEN), nn.Tanh(), nn.Linear(HIDDEN, 1))

    def forward(self, x):
        return self.net(x)


def true_weights(seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed + 12345)
    return torch.randn(IN_FEATURES, 1, generator=g)


def make_batch(indices, seed: int, w_true: torch.Tensor):
    """Sample i depends only on (seed, i): any rank can build any slice of the data."""
    xs, ys = [], []
    for i in indices:
        g = torch.Generator().manual_seed(seed * 1_000_003 + i)
        x = torch.randn(IN_FEATURES, generator=g)
        y = torch.tanh(x @ w_true / IN_FEATURES ** 0.5) + 0.05 * torch.randn(1, generator=g)
        xs.append(x)
        ys.append(y)
    return torch.stack(xs), torch.stack(ys)


def fmt(v):
    return f"{v:.4g}" if isinstance(v, float) else v


def weights_file(ckpt: str) -> str | None:
    for name in ("model.safetensors", "model.pt"):
        path = os.path.join(ckpt, name)
        if os.path.exists(path):
            return path
    return None


def save_checkpoint(args, step, model, optimizer, state, world_size):
    ckpt = os.path.join(args.output_dir, f"checkpoint-{step}")
    os.makedirs(ckpt, exist_ok=True)
    sd = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    if _st_save is not None:
        _st_save(sd, os.path.join(ckpt, "model.safetensors"), metadata={"format": "pt"})
    else:
        torch.save(sd, os.path.join(ckpt, "model.pt"))
    torch.save(optimizer.state_dict(), os.path.join(ckpt, "optimizer.pt"))
    torch.save({"python": random.getstate(), "cpu": torch.get_rng_state()}, os.path.join(ckpt, "rng_state.pth"))
    state = dict(state, global_step=step)
    # Last, as the HF Trainer does: a checkpoint without it is incomplete.
    with open(os.path.join(ckpt, "trainer_state.json"), "w") as f:
        json.dump(state, f, indent=2, sort_keys=True)
        f.write("\n")
    return ckpt


@record
def main(argv=None):
    args = parse_args(argv)
    try:
        sys.stdout.reconfigure(line_buffering=True)
    except AttributeError:
        pass

    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    distributed = world_size > 1
    if distributed:
        dist.init_process_group("gloo", init_method="env://", rank=rank, world_size=world_size,
                                timeout=datetime.timedelta(seconds=args.dist_timeout_s))
    is_main = rank == 0

    per_device = args.per_device_train_batch_size
    accum = args.gradient_accumulation_steps
    global_batch = per_device * accum * world_size

    random.seed(args.seed)
    torch.manual_seed(args.seed)
    model = Model()
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.learning_rate, weight_decay=0.0)
    log_history = []
    start_step = 0

    if args.resume_from_checkpoint:
        ckpt = args.resume_from_checkpoint
        state_path = os.path.join(ckpt, "trainer_state.json")
        wfile = weights_file(ckpt)
        if not os.path.exists(state_path) or wfile is None:
            raise FileNotFoundError(f"{ckpt} is not a complete checkpoint (needs weights and trainer_state.json)")
        with open(state_path) as f:
            saved = json.load(f)
        start_step = int(saved["global_step"])
        log_history = [e for e in saved.get("log_history", []) if e.get("step", 0) <= start_step]
        if wfile.endswith(".safetensors"):
            if _st_load is None:
                raise RuntimeError(f"{wfile} needs the safetensors package")
            sd = _st_load(wfile)
        else:
            sd = torch.load(wfile, map_location="cpu", weights_only=True)
        model.load_state_dict(sd)
        opt_path = os.path.join(ckpt, "optimizer.pt")
        if os.path.exists(opt_path):
            optimizer.load_state_dict(torch.load(opt_path, map_location="cpu", weights_only=True))
        for group in optimizer.param_groups:  # the command line's LR wins, as in a relaunch
            group["lr"] = args.learning_rate
            group["initial_lr"] = args.learning_rate

    ddp_model = nn.parallel.DistributedDataParallel(model) if distributed else model

    if is_main:
        print(f"[demo] world_size={world_size} per_device={per_device} grad_accum={accum} "
              f"global_batch={global_batch} start_step={start_step} "
              f"resume_from={args.resume_from_checkpoint}")

    # Grown at the top of each step; the first step after a resume takes it all at once (the spike).
    ballast = Ballast(args.ballast_mb, args.ballast_ramp_steps)

    w_true = true_weights(args.seed)
    loss_fn = nn.MSELoss()
    base_state = {
        "max_steps": args.max_steps,
        "train_batch_size": per_device,
        "gradient_accumulation_steps": accum,
        "world_size": world_size,
        "global_batch": global_batch,
        "save_steps": args.save_steps,
        "learning_rate": args.learning_rate,
        "seed": args.seed,
    }

    for step in range(start_step + 1, args.max_steps + 1):
        ballast.grow_to(step)
        first = (step - 1) * global_batch       # 0-based step s uses samples [s*G, (s+1)*G)
        loss_sum = 0.0
        for micro in range(accum):
            lo = first + micro * per_device * world_size + rank * per_device
            x, y = make_batch(range(lo, lo + per_device), args.seed, w_true)
            loss = loss_fn(ddp_model(x), y) / accum
            if distributed and micro < accum - 1:
                with ddp_model.no_sync():
                    loss.backward()
            else:
                loss.backward()
            loss_sum += loss.item()
        grad_norm = float(nn.utils.clip_grad_norm_(model.parameters(), MAX_GRAD_NORM))
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if distributed:
            t = torch.tensor([loss_sum])
            dist.all_reduce(t)
            loss_sum = t.item() / world_size

        entry = {
            "loss": loss_sum,
            "grad_norm": grad_norm,
            "learning_rate": optimizer.param_groups[0]["lr"],
            "epoch": step * global_batch / SAMPLES_PER_EPOCH,
        }
        log_history.append({**entry, "step": step})
        if is_main:
            print(str({k: fmt(v) for k, v in entry.items()} | {"step": step}))

        if step % args.save_steps == 0 or step == args.max_steps:
            if is_main:
                path = save_checkpoint(args, step, model, optimizer,
                                       dict(base_state, log_history=log_history), world_size)
                print(f"[demo] saved {path}")
            if distributed:
                dist.barrier()
        if args.step_seconds > 0:
            time.sleep(args.step_seconds)

    if is_main:
        print(f"[demo] finished at step {args.max_steps}")
    if distributed:
        dist.barrier()
        dist.destroy_process_group()


if __name__ == "__main__":
    main()
