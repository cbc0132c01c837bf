"""What a recipe says, as frozen dataclasses: the types, without the YAML loader.

A leaf module (it imports only the leaves failures.py and units.py), so that whatever
needs a Recipe, a Rung or a Model as a type (the ladder, the command builder, the
supervisor) imports this and not recipe.py, which reads and checks the file
(yamlnodes.py, rungs.py, modelspec.py, accelerate.py read their sections into these).
"""
from __future__ import annotations

import sys
from dataclasses import dataclass, fields
from pathlib import Path

from .failures import Kind
from .units import Size

#: What `checkpoints.on_world_size_change` may say (launcher/resume.py acts on it).
WORLD_SIZE_POLICIES = ("universal", "weights_only", "fail")


@dataclass(frozen=True)
class Rung:
    on: tuple[Kind, ...]
    gpus: int | None = None
    batch: int | str | None = None             # 'halve' or a positive micro-batch
    lr: float | None = None                    # a factor: 'halve' -> 0.5
    gradient_checkpointing: bool | None = None
    zero_stage: int | None = None              # 0..3
    zero3_offload: bool | None = None
    offload_pin_memory: bool | None = None
    gather_16bit_on_save: bool | None = None
    save_only_model: bool | None = None
    dataloader_workers: int | None = None      # >= 0
    args: tuple[tuple[str, object], ...] = ()
    env: tuple[tuple[str, str], ...] = ()
    line: int = 0                              # 1-based line where the rung starts


#: What a rung can change: every field but `on` and `line`, in the order the recipe lists them.
RUNG_CHANGES = tuple(field.name for field in fields(Rung) if field.name not in ("on", "line"))


@dataclass(frozen=True)
class Model:
    """What the job trains, for the memory estimate. Unset values come from config.json."""

    path: str | None = None          # a local HF model folder (relative to workdir) or a hub id
    params: float | None = None      # total parameters, when there is no config.json to read
    vision_params: float | None = None  # the vision tower's, when config.json does not say
    vocab_size: int | None = None
    trainable: str = "full"          # full | lora
    lora_rank: int = 8
    lora_targets: str = "all-linear"
    vision_tower_frozen: bool = True
    precision: str = "bf16"
    load_precision: str | None = None  # dtype the weights are loaded in (default: precision)
    seq_len: int = 2048              # tokens per sample, image tokens included (the worst case)
    gradient_checkpointing: bool | None = None  # None: read `gradient_checkpointing` in args
    zero_stage: int | None = None    # when the DeepSpeed config cannot be read here
    offload: str | None = None       # none | optimizer | all, likewise


@dataclass(frozen=True)
class AccelerateCfg:
    """The `accelerate:` section, with what its config file says that changes the command."""

    config_file: Path | None = None   # absolute
    num_machines: int = 1             # the recipe's, else the file's, else 1
    machine_rank: int | None = None   # the recipe's (the file's applies by itself)
    main_process_ip: str | None = None
    main_process_port: int | None = None
    port_in_file: bool = False        # the config file names main_process_port
    engine: str | None = None         # the file's distributed_type, or an engine flag in `flags:`;
    #                                   UNREAD: a config file missing (guardrun plan on another machine)
    flags: tuple[str, ...] = ()       # more `accelerate launch` flags, as given


@dataclass(frozen=True)
class Batch:
    per_device: int
    grad_accum: int = 1
    per_device_arg: str = "--per_device_train_batch_size"
    grad_accum_arg: str = "--gradient_accumulation_steps"


@dataclass(frozen=True)
class LearningRate:
    value: float
    arg: str = "--learning_rate"


@dataclass(frozen=True)
class DeepSpeedCfg:
    config: Path  # absolute; the file exists
    arg: str = "--deepspeed"


@dataclass(frozen=True)
class Checkpoints:
    dir: Path  # absolute; need not exist yet
    resume_arg: str | None = "--resume_from_checkpoint"  # None: the script resumes by itself
    pattern: str | None = None  # a regex whose one group is the step
    # A ZeRO checkpoint resumed on another number of ranks: convert it to a universal
    # checkpoint, pass only its weights (through weights_arg), or give up.
    on_world_size_change: str = "universal"  # one of WORLD_SIZE_POLICIES
    weights_arg: str | None = None  # with weights_only: the argument that takes the checkpoint path


@dataclass(frozen=True)
class Limits:
    host_memory: Size | None = None    # the job's process tree (PSS); a percent of MemTotal
    min_available: Size | None = None  # MemAvailable floor for the whole machine
    vram: Size | None = None           # per GPU; a percent of that GPU's memory
    hang_after: float | None = None    # seconds without progress
    gpu_release: float = 120.0         # seconds to wait for the last attempt's GPU memory
    hard_memory: Size | str | None = None  # the cgroup's kernel limit; None: host_memory + 10%; "off"


@dataclass(frozen=True)
class Restarts:
    max: int = 8
    backoff: tuple[float, float] = (10.0, 300.0)  # first wait, cap (seconds)


@dataclass(frozen=True)
class Logs:
    max_size: int = 1 << 30  # bytes of output.log per attempt: the head and the newest tail are kept


@dataclass(frozen=True)
class Monitor:
    interval: float = 0.5  # seconds between samples


@dataclass(frozen=True)
class Metrics:
    """Where the job's numbers go for Prometheus (supervisor/record/metrics.py)."""

    textfile: Path  # absolute: node_exporter's --collector.textfile.directory; need not exist


@dataclass(frozen=True)
class ProgressPatterns:
    """Regexes for jobs whose progress no built-in parser reads (supervisor/diagnose/logs.py)."""

    step_regex: str | None = None  # group 1: the step; an optional group 2: the total
    loss_regex: str | None = None  # group 1: the loss ('nan' and 'inf' count as NaN)


@dataclass(frozen=True)
class SuccessEvidence:
    """What must be seen before an exit 0 counts as finished (XTuner exits 0 after a failure)."""

    regex: str | None = None  # a line of the output must match
    file: Path | None = None  # absolute; must exist when the job exits


@dataclass(frozen=True)
class Nodes:
    """The `nodes:` section: one job over several machines, one guardrun on each (launcher/nodes.py)."""

    count: int | None = None                   # None: not written (SLURM_NNODES under SLURM, else 1)
    rendezvous: tuple[str, int] | None = None  # host, port of node rank 0; None: SLURM's first host
    shared_dir: Path | None = None             # absolute; when loaded, default <checkpoints.dir>/.guardrun
    timeout: float = 600.0                     # seconds a node waits for the others at a barrier


@dataclass(frozen=True)
class NodeView:
    """Which part of the job this guardrun runs: the recipe's `nodes:` resolved with --node-rank
    and the environment (launcher/nodes.py). One machine: count 1, rank 0, no rendezvous."""

    count: int = 1
    rank: int = 0
    rendezvous_host: str | None = None
    rendezvous_port: int | None = None
    shared_dir: Path | None = None
    timeout: float = Nodes.timeout

    @property
    def multi(self) -> bool:
        return self.count > 1


@dataclass(frozen=True)
class Recipe:
    path: Path  # absolute
    name: str
    workdir: Path
    launcher: str
    script: Path | None
    module: str | None
    args: tuple  # mapping form: ((key, value), ...) in file order; list form: (str, ...)
    args_is_list: bool
    env: tuple[tuple[str, str], ...]
    gpus: int | tuple[int, ...] | str  # a count, GPU ids, or "all"
    batch: Batch | None
    lr: LearningRate | None
    deepspeed: DeepSpeedCfg | None
    checkpoints: Checkpoints | None
    limits: Limits
    ladder: tuple[Rung, ...]
    ladder_given: bool  # False: no `ladder:` key, the default ladder applies
    restarts: Restarts
    monitor: Monitor
    stop_grace: float = 30.0
    python: str = sys.executable
    wait_for_gpus: float | None = None  # seconds to wait for enough free GPUs; None: fail at once
    progress: ProgressPatterns | None = None
    success: SuccessEvidence | None = None
    nan_patience: int = 1            # logged nan/inf steps in a row before guardrun acts
    startup_window: float = 600.0    # the same error twice this soon after the start: user_error
    trainer: str = "auto"            # hf | plain | auto: may rungs pass TrainingArguments flags
    containment: str = "auto"        # auto | cgroup | off: run the job in a memory cgroup of its own
    # issue 7 (modelspec.py): a tool's own command line, and what the memory preflight needs
    command: tuple[str, ...] = ()    # launcher: command, e.g. (llamafactory-cli, train, cfg.yaml)
    args_style: str = "flags"        # flags: --key value; key=value: LLaMA-Factory, --cfg-options
    args_group: str | None = None    # key=value tokens go after this flag (XTuner's --cfg-options)
    ranks_env: str | None = None     # set to the rung's rank count (NPROC_PER_NODE)
    model: Model | None = None
    preflight: bool = True           # skip rungs predicted not to fit
    warnings: tuple[str, ...] = ()   # missing paths, when loaded with missing_ok (guardrun plan)
    overrides: tuple[str, ...] = ()  # KEY=VALUE from the command line, as given (overrides.py)
    logs: Logs = Logs()
    accelerate: AccelerateCfg | None = None  # launcher: accelerate (accelerate.py)
    nodes: Nodes = Nodes()           # the `nodes:` section as written (defaults filled)
    node: NodeView = NodeView()      # this guardrun's node, resolved when loaded (nodes.py)
    metrics: Metrics | None = None   # a textfile for node_exporter; `--metrics-dir` replaces it
