"""`launcher: accelerate`: the recipe's `accelerate:` section and the `accelerate launch` command.

    accelerate launch [--config_file F] [--multi_gpu] --num_processes N --num_machines M
        [--machine_rank R --main_process_ip IP] [--main_process_port P] [--gpu_ids all]
        [flags...] script args

The gpus rung changes `--num_processes`: that is what the rung is for (LLaMA-Factory #6486,
an FSDP resume through `accelerate launch` that OOM-killed the host; with only an env var
to turn, guardrun could not take a process away). What accelerate 1.15 does with these
flags, read in accelerate/commands/launch.py and checked on CPU:

- `--num_processes` is the total over all machines (nproc_per_node = N / num_machines).
- More than one process goes through torch.distributed.run in accelerate's own process
  (`multi_gpu_launcher`) only with `--multi_gpu` or an engine from the config file; without
  either, on a machine with fewer than two visible GPUs, it starts ONE process whatever
  `--num_processes` says (`simple_launcher`). `--cpu` always takes that path. So guardrun
  passes `--multi_gpu` for N > 1 unless the config file or `flags:` name the engine
  (FSDP, DeepSpeed, ...): an explicit `--multi_gpu` makes accelerate skip the file's
  `distributed_type`, so a FSDP job would silently run as plain DDP.
- One process runs through `simple_launcher` (a Popen): it does not forward SIGTERM and
  dies of it, leaving the script running; guardrun's stop then signals each process left
  (supervisor/watch/proc.py), measured: the script got its own SIGTERM and exited. A script the
  kernel kills there shows only as "CalledProcessError: ... died with <Signals.SIGKILL: 9>"
  and exit 1 (supervisor/diagnose/logs.py reads it as host_oom).
- Under torch.distributed.run a SIGTERM to accelerate stops every rank (measured: exit 1
  after 0.3 s, no process left), like torchrun.
- `--main_process_port 0` picks a free port; guardrun passes it on one machine unless the
  recipe or the config file names a port (a port chosen per node would break a
  multi-machine rendezvous, so there nothing is passed).
- `--gpu_ids all`: guardrun's CUDA_VISIBLE_DEVICES picks the GPUs; a config file's own
  `gpu_ids` list would override it, and a MULTI_GPU file with one id is refused (measured:
  "ValueError: Less than two GPU ids were configured", with `--num_processes 1 --gpu_ids 0`).

The config file is read when the recipe is loaded for what changes the command (machines,
port, engine); accelerate reads it again itself. Its default config
(~/.cache/huggingface/accelerate/default_config.yaml) is not looked at: name it.
"""
from __future__ import annotations

import os
from pathlib import Path

import yaml
from yaml.nodes import Node

from .spec import AccelerateCfg
from .yamlnodes import (
    Ctx,
    Field,
    integer,
    items,
    kind_of,
    pairs,
    read_fields,
    scalar,
    text,
)

#: `--tee 3`: both streams of every rank into its own file under `--log_dir`, and still shown
#: (torchrun's `--redirects 3 --tee 3`; accelerate has no `--redirects`, and needs none: measured).
TEE_ALL = "3"
#: Engines a config file's `distributed_type` can name that run without `--multi_gpu`.
_NO_ENGINE = (None, "NO")
#: A config file that could not be read names, most likely, its engine: `plan` shows no --multi_gpu.
UNREAD = "(config file not read)"
#: Launch flags that choose the engine themselves (accelerate refuses two of them).
ENGINE_FLAGS = ("--use_deepspeed", "--use_fsdp", "--use_megatron_lm", "--tpu")
#: Flags guardrun writes from the rung or the section; in `flags:` they would fight it.
OWNED = {"--num_processes": "from the rung's gpus", "--num_machines": "from accelerate.num_machines",
         "--machine_rank": "from accelerate.machine_rank", "--main_process_ip": "from accelerate.main_process_ip",
         "--main_process_port": "from accelerate.main_process_port", "--config_file": "from accelerate.config_file",
         "--gpu_ids": "to all: CUDA_VISIBLE_DEVICES picks the rung's GPUs", "--log_dir": "to the attempt's folder",
         "--tee": "to keep each rank's output", "-t": "to keep each rank's output",
         "-m": "from the recipe's module:", "--module": "from the recipe's module:",
         "--multi_gpu": "for more than one process; accelerate refuses it for one"}


def launch_argv(python: str, cfg: AccelerateCfg | None, ranks: int, gpu_ids: object,
                port: int | None) -> tuple[str, ...]:
    """`accelerate launch` up to the script, for `ranks` processes on this machine."""
    cfg = cfg or AccelerateCfg()
    total = ranks * cfg.num_machines
    argv = [python, "-m", "accelerate.commands.launch"]
    if cfg.config_file is not None:
        argv += ["--config_file", str(cfg.config_file)]
    if total > 1 and cfg.engine in _NO_ENGINE:
        argv.append("--multi_gpu")
    argv += ["--num_processes", str(total), "--num_machines", str(cfg.num_machines)]
    if cfg.machine_rank is not None:
        argv += ["--machine_rank", str(cfg.machine_rank)]
    if cfg.main_process_ip is not None:
        argv += ["--main_process_ip", cfg.main_process_ip]
    if cfg.main_process_port is not None:
        argv += ["--main_process_port", str(cfg.main_process_port)]
    elif cfg.num_machines == 1 and not cfg.port_in_file:
        argv += ["--main_process_port", str(port if port is not None else 0)]
    if gpu_ids is not None:
        argv += ["--gpu_ids", "all"]
    return tuple(argv) + cfg.flags


def rank_log_flags(ranks_dir: Path) -> tuple[str, ...]:
    """Each rank's stdout/stderr (and error file) under `ranks_dir`, every line still shown."""
    return ("--log_dir", str(ranks_dir), "--tee", TEE_ALL)


# -- the recipe's `accelerate:` section --------------------------------------------------

def _config_file(node: Node, key: str, ctx: Ctx) -> Path:
    path = Path(os.path.normpath(ctx.workdir / os.path.expanduser(text(node, key, ctx))))
    if not path.is_file():
        ctx.fail_or_warn(node, key, f"accelerate config not found: {path} "
                         f"(relative paths start at workdir {ctx.workdir})")
    return path


def _flags(node: Node, key: str, ctx: Ctx) -> tuple[str, ...]:
    tokens: list[str] = []
    for index, item in enumerate(items(node, key, ctx, "a list like [--mixed_precision, bf16]")):
        where = f"{key}[{index}]"
        value = scalar(item, where, ctx, "a string")
        if not isinstance(value, str) or not value.strip():
            ctx.fail(item, where, f"expected a string (quote numbers: '8'), got {kind_of(item)}")
        name = value.split("=", 1)[0]
        if index == 0 and not name.startswith("-"):
            ctx.fail(item, where, f"expected a flag like --mixed_precision first, got {value!r}")
        if name == "--cpu":
            ctx.fail(item, where, "--cpu starts one process whatever --num_processes says (accelerate "
                     "1.15); on a machine without GPUs accelerate uses the CPU by itself: remove it")
        if name in OWNED:
            ctx.fail(item, where, f"guardrun sets {name} ({OWNED[name]}): remove it")
        tokens.append(value)
    return tuple(tokens)


FIELDS = (
    Field("config_file", _config_file, default=None),
    Field("num_machines", integer(1), default=None),
    Field("machine_rank", integer(0), default=None),
    Field("main_process_ip", text, default=None),
    Field("main_process_port", integer(0, 65535), default=None),
    Field("flags", _flags, default=()),
)


def section(node: Node, key: str, ctx: Ctx) -> AccelerateCfg:
    """`accelerate: {config_file: ..., num_machines: ..., flags: [...]}` checked as a whole."""
    values = read_fields(node, key, ctx, FIELDS, what="a mapping like {config_file: fsdp.yaml}")
    given = {name: value_node for name, _, value_node in pairs(node, key, ctx)}
    file = _read_config(values["config_file"], given.get("config_file"), f"{key}.config_file", ctx)
    machines = values["num_machines"] or _int(file.get("num_machines")) or 1
    rank = values["machine_rank"] if values["machine_rank"] is not None else _int(file.get("machine_rank"))
    if machines > 1 and (rank is None or not (values["main_process_ip"] or file.get("main_process_ip"))):
        ctx.fail(given.get("machine_rank", node), f"{key}.machine_rank",
                 f"num_machines {machines} needs machine_rank and main_process_ip (here or in the "
                 "config file): each machine's guardrun launches its own part")
    if rank is not None and rank >= machines:
        ctx.fail(given.get("machine_rank", node), f"{key}.machine_rank",
                 f"machine_rank {rank} is not below num_machines {machines} (ranks count from 0)")
    flag_engine = next((f for f in values["flags"] if f in ENGINE_FLAGS), None)
    unread = values["config_file"] is not None and not values["config_file"].is_file()
    engine = flag_engine or (UNREAD if unread else _text(file.get("distributed_type")))
    return AccelerateCfg(config_file=values["config_file"], num_machines=machines,
                         machine_rank=values["machine_rank"], main_process_ip=values["main_process_ip"],
                         main_process_port=values["main_process_port"],
                         port_in_file=file.get("main_process_port") is not None,
                         engine=engine, flags=values["flags"])


def _read_config(path: Path | None, node: Node | None, key: str, ctx: Ctx) -> dict:
    """The config file's top-level values ({} when there is none, or it is missing for plan)."""
    if path is None or node is None or not path.is_file():
        return {}
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))  # accelerate reads JSON or YAML
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as err:
        ctx.fail(node, key, f"cannot read the accelerate config {path}: {err}")
    if not isinstance(data, dict):
        ctx.fail(node, key, f"the accelerate config {path} is not a mapping of settings "
                 "(what `accelerate config` writes)")
    return data


def _int(value: object) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _text(value: object) -> str | None:
    return str(value) if value is not None else None


def check_launcher(root: Node, ctx: Ctx, values: dict) -> None:
    """`accelerate:` only means something with `launcher: accelerate`."""
    if values.get("accelerate") is None or values.get("launcher") == "accelerate":
        return
    key_node = next(key_node for name, key_node, _ in pairs(root, "", ctx) if name == "accelerate")
    ctx.fail(key_node, "accelerate", "`accelerate:` needs `launcher: accelerate` "
             f"(the launcher is {values.get('launcher')})")
