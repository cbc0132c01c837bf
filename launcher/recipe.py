"""A recipe file -> a frozen Recipe, or one RecipeError naming file, line and key.

Each mapping in the file is read through a table of `Field`s (yamlnodes.py): adding a
top-level key is one entry in `TOP` plus one field of `Recipe` (spec.py). The first problem found
is raised, in file order, except that `workdir` is read first because the other paths
are relative to it. The ladder's rungs live in rungs.py.
"""
from __future__ import annotations

import os
import re
import sys
from dataclasses import replace
from pathlib import Path
from typing import Mapping, NoReturn, Sequence

from yaml.nodes import Node

from . import accelerate, dsconfig, modelspec, multinode, nodes
from .overrides import apply as apply_overrides
from .overrides import parse as parse_overrides
from .rungs import HF_RUNG_FLAGS, read_ladder
from .spec import (
    WORLD_SIZE_POLICIES,
    Batch,
    Checkpoints,
    DeepSpeedCfg,
    LearningRate,
    Limits,
    Logs,
    Metrics,
    Monitor,
    Nodes,
    ProgressPatterns,
    Recipe,
    Restarts,
    Rung,
    SuccessEvidence,
)
from .yamlnodes import (
    Converter,
    Ctx,
    Field,
    RecipeError,
    choice,
    compose,
    duration,
    env_pairs,
    integer,
    items,
    kind_of,
    line_of,
    mapping_args,
    number,
    optional,
    pairs,
    read_fields,
    scalar,
    size,
    size_bytes,
    text,
)

__all__ = ["RecipeError", "load_recipe"]  # the types are in spec.py

LAUNCHERS = ("torchrun", "deepspeed", "python", "accelerate", "command")  # command: `command:` as given
TRAINERS = ("auto", "hf", "plain")  # does the job parse HF TrainingArguments (launcher/trainer.py)
CONTAINMENTS = ("auto", "cgroup", "off")  # a memory cgroup of the job's own (supervisor/watch/containment.py)
#: logs.max_size's floor: two of the longest lines guardrun keeps (lines.MAX_LINE, 64 KiB).
MIN_LOG_SIZE = 128 * 1024
_NAME_RE = re.compile(r"^[A-Za-z0-9._-]+$")
_MODULE_RE = re.compile(r"^[A-Za-z_]\w*(\.[A-Za-z_]\w*)*$")


def load_recipe(path: str | Path, *, missing_ok: bool = False, overrides: Sequence[str] = (),
                env: Mapping[str, str] | None = None) -> Recipe:
    """Read and check a recipe file. Raises RecipeError on the first problem.

    `missing_ok` (used by `guardrun plan` only, which runs nothing): a missing workdir,
    script or DeepSpeed config becomes a line in `warnings` instead of an error, so a
    recipe written for another machine can still be planned. `overrides`: KEY=VALUE words
    from the command line, set into the file's keys before it is read (overrides.py). `env`
    (default os.environ): where the node rank and a SLURM allocation are read (nodes.py).
    """
    file = Path(path)
    root, loader = compose(file)
    given = parse_overrides(overrides)
    apply_overrides(root, given)
    ctx = Ctx(file=file, loader=loader, workdir=file.absolute().parent, missing=[] if missing_ok else None)
    for name, _key_node, value_node in pairs(root, "", ctx):
        if name == "workdir":
            ctx = replace(ctx, workdir=_workdir(value_node, "workdir", ctx))
    values = read_fields(root, "", ctx, TOP)
    _check_target(root, ctx, values)
    accelerate.check_launcher(root, ctx, values)
    values["nodes"], values["node"] = _node_view(root, ctx, values, os.environ if env is None else env)
    recipe = Recipe(path=file.absolute(), **values, warnings=tuple(dict.fromkeys(ctx.missing or ())),
                    overrides=tuple(each.text for each in given))
    _check_rungs_apply(root, ctx, recipe)
    return recipe


# -- paths -----------------------------------------------------------------------------

def _resolve(base: Path, written: str) -> Path:
    # normpath, not resolve(): keep the user's symlinks in what `guardrun plan` prints.
    return Path(os.path.normpath(base / os.path.expanduser(written)))


def _workdir(node: Node, key: str, ctx: Ctx) -> Path:
    recipe_dir = ctx.file.absolute().parent
    path = _resolve(recipe_dir, text(node, key, ctx))
    if not path.is_dir():
        ctx.fail_or_warn(node, key, f"directory not found: {path} (relative to the recipe's folder {recipe_dir})")
    return path


def _existing_file(what: str) -> Converter:
    def convert(node: Node, key: str, ctx: Ctx) -> Path:
        path = _resolve(ctx.workdir, text(node, key, ctx))
        if not path.is_file():
            ctx.fail_or_warn(node, key, f"{what} not found: {path} (relative paths start at workdir {ctx.workdir})")
        return path
    return convert


def _dir_in_workdir(node: Node, key: str, ctx: Ctx) -> Path:
    return _resolve(ctx.workdir, text(node, key, ctx))


# -- top-level values ------------------------------------------------------------------

def _name(node: Node, key: str, ctx: Ctx) -> str:
    value = scalar(node, key, ctx, "a name")
    if not isinstance(value, (str, int)) or isinstance(value, bool) or not _valid_name(str(value)):
        ctx.fail(node, key, f"expected a name of letters, digits, '.', '_' and '-', got {kind_of(node)}")
    return str(value)


def _valid_name(name: str) -> bool:
    # it names a folder under the state dir: '.' and '..' would point elsewhere
    return bool(_NAME_RE.match(name)) and name.strip(".") != ""


def _default_name(ctx: Ctx) -> str:
    stem = ctx.file.stem
    if not _valid_name(stem):
        raise RecipeError(ctx.file, 1, "name", f"the file name {stem!r} cannot name the job (letters, "
                          "digits, '.', '_' and '-' only): add a `name:` key")
    return stem


def _module(node: Node, key: str, ctx: Ctx) -> str:
    value = text(node, key, ctx)
    if not _MODULE_RE.match(value):
        ctx.fail(node, key, f"expected a python module like pkg.train, got {value!r}")
    return value


def _args(node: Node, key: str, ctx: Ctx) -> tuple[tuple, bool]:
    """A mapping (rendered `--key value`) or a list of strings passed as they are."""
    if node.id == "sequence":
        tokens = []
        for index, item in enumerate(items(node, key, ctx, "a list")):
            value = scalar(item, f"{key}[{index}]", ctx, "a string")
            if not isinstance(value, str):
                quote = f" (quote it: '{item.value}')" if value is not None else ""
                ctx.fail(item, f"{key}[{index}]", f"expected a string, got {kind_of(item)}{quote}")
            tokens.append(value)
        return tuple(tokens), True
    return mapping_args(node, key, ctx, "a mapping of arguments or a list of strings"), False


def _gpus(node: Node, key: str, ctx: Ctx) -> int | tuple[int, ...] | str:
    what = "a GPU count >= 1, a list of GPU ids like [0, 1], or all"
    if node.id == "sequence":
        return _gpu_ids(node, key, ctx)
    value = scalar(node, key, ctx, what)
    if value == "all":
        return "all"
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        ctx.fail(node, key, f"expected {what}, got {kind_of(node)}")
    return value


def _gpu_ids(node: Node, key: str, ctx: Ctx) -> tuple[int, ...]:
    ids: list[int] = []
    nodes = items(node, key, ctx, "a list of GPU ids")
    if not nodes:
        ctx.fail(node, key, "expected at least one GPU id, got an empty list")
    for index, item in enumerate(nodes):
        value = integer(0)(item, f"{key}[{index}]", ctx)
        if value in ids:
            ctx.fail(item, f"{key}[{index}]", f"GPU {value} is listed twice")
        ids.append(value)
    return tuple(ids)


def _regex(least: int, most: int, groups: str) -> Converter:
    """A regular expression with `least` to `most` groups (`groups` says what they capture)."""
    def convert(node: Node, key: str, ctx: Ctx) -> str:
        value = text(node, key, ctx)
        try:
            count = re.compile(value).groups
        except re.error as err:
            ctx.fail(node, key, f"not a valid regular expression: {err}")
        if not least <= count <= most:
            wanted = f"exactly {least}" if least == most else f"{least} or {most}"
            ctx.fail(node, key, f"expected a regex with {wanted} group(s) ({groups}); '{value}' has {count}")
        return value
    return convert


def _nonempty(cls: type, fields: tuple[Field, ...]) -> Converter:
    """A section of optional keys of which at least one must be given."""
    def convert(node: Node, key: str, ctx: Ctx):
        value = section(cls, fields)(node, key, ctx)
        if value == cls():
            ctx.fail(node, key, "give at least one of " + ", ".join(f.key for f in fields))
        return value
    return convert


def _backoff(node: Node, key: str, ctx: Ctx) -> tuple[float, float]:
    nodes = items(node, key, ctx, "a list of two durations [first, cap], like [10s, 5m]")
    if len(nodes) != 2:
        ctx.fail(node, key, f"expected two durations [first, cap], like [10s, 5m]; got {len(nodes)} item(s)")
    first, cap = (duration()(item, f"{key}[{i}]", ctx) for i, item in enumerate(nodes))
    if first > cap:
        ctx.fail(node, key, f"the first wait ({first:g}s) is longer than the cap ({cap:g}s)")
    return first, cap


def _ladder(node: Node, key: str, ctx: Ctx) -> tuple[tuple[Rung, ...], bool]:
    return read_ladder(node, key, ctx), True


def section(cls: type, fields: tuple[Field, ...]) -> Converter:
    """A converter for a nested mapping read into dataclass `cls` through `fields`."""
    def convert(node: Node, key: str, ctx: Ctx):
        return cls(**read_fields(node, key, ctx, fields))
    return convert


def _deepspeed_config(node: Node, key: str, ctx: Ctx) -> Path:
    path = _existing_file("DeepSpeed config")(node, key, ctx)
    if not path.is_file():  # missing_ok: already a warning
        return path
    try:
        dsconfig.load(path)
    except dsconfig.DeepSpeedConfigError as err:
        ctx.fail(node, key, str(err))
    return path


def _checkpoints(node: Node, key: str, ctx: Ctx) -> Checkpoints:
    value = section(Checkpoints, CHECKPOINTS)(node, key, ctx)
    if value.on_world_size_change == "weights_only" and not value.weights_arg:
        ctx.fail(node, f"{key}.weights_arg", "on_world_size_change: weights_only needs `weights_arg:`, "
                 "the argument your script loads weights from (like --model_name_or_path)")
    return value


BATCH = (
    Field("per_device", integer(1), hint="the micro-batch per GPU, an integer >= 1"),
    Field("grad_accum", integer(1), default=1),
    Field("per_device_arg", text, default=Batch.per_device_arg),
    Field("grad_accum_arg", text, default=Batch.grad_accum_arg),
)
LR = (
    Field("value", number(positive=True), hint="the learning rate, like 2.0e-4"),
    Field("arg", text, default=LearningRate.arg),
)
DEEPSPEED = (
    Field("config", _deepspeed_config, hint="the DeepSpeed JSON file, relative to workdir"),
    Field("arg", text, default=DeepSpeedCfg.arg),
)
CHECKPOINTS = (
    Field("dir", _dir_in_workdir, hint="the folder the job saves checkpoints in, relative to workdir"),
    Field("resume_arg", optional(text), default=Checkpoints.resume_arg),
    Field("pattern", _regex(1, 1, "the step, like 'checkpoint-(\\d+)'"), default=None),
    Field("on_world_size_change", choice(WORLD_SIZE_POLICIES),
          default=Checkpoints.on_world_size_change),
    Field("weights_arg", optional(text), default=None),
)
LIMITS = (
    Field("host_memory", size(), default=None),
    Field("min_available", size(), default=None),
    Field("vram", size(), default=None),
    Field("hang_after", duration(positive=True), default=None),
    Field("gpu_release", duration(positive=True), default=Limits.gpu_release),
    Field("hard_memory", lambda node, key, ctx: "off" if scalar(node, key, ctx, "a size or off") is False
          or getattr(node, "value", None) == "off" else size()(node, key, ctx), default=None),
)
RESTARTS = (
    Field("max", integer(0), default=Restarts.max),
    Field("backoff", _backoff, default=Restarts.backoff),
)
MONITOR = (Field("interval", duration(0.05, 60.0), default=Monitor.interval),)
METRICS = (Field("textfile", _dir_in_workdir, hint="the folder node_exporter's textfile collector reads "
                  "(its --collector.textfile.directory), relative to workdir"),)
LOGS = (Field("max_size", size_bytes(MIN_LOG_SIZE), default=Logs.max_size),)
PROGRESS = (
    Field("step_regex", _regex(1, 2, "the step, then optionally the total"), default=None),
    Field("loss_regex", _regex(1, 1, "the loss"), default=None),
)
SUCCESS = (
    Field("regex", _regex(0, 99, ""), default=None),
    Field("file", _dir_in_workdir, default=None),
)

def _rendezvous(node: Node, key: str, ctx: Ctx) -> tuple[str, int]:
    value = text(node, key, ctx).strip()
    host, _, port = value.rpartition(":")
    host = host.strip("[]")  # [::1]:29400
    if not host or not port.isdigit() or not 1 <= int(port) <= 65535:
        ctx.fail(node, key, f"expected host:port of node rank 0, like node01:29400; got {value!r}")
    return host, int(port)


NODES = (
    Field("count", integer(1), default=None),
    Field("rendezvous", _rendezvous, default=None),
    Field("shared_dir", _dir_in_workdir, default=None),
    Field("timeout", duration(positive=True), default=Nodes.timeout),
)


#: Every top-level key. A new key: one entry here and one field of Recipe.
TOP = (
    Field("name", _name, default_from=_default_name),
    Field("workdir", _workdir, default_from=lambda ctx: ctx.workdir),
    Field("launcher", choice(LAUNCHERS), hint="how to start the job: torchrun, deepspeed, python, accelerate or command"),
    Field("python", text, default=sys.executable),
    Field("script", _existing_file("script"), default=None),
    Field("module", _module, default=None),
    Field("args", _args, default=((), False), into=("args", "args_is_list")),
    Field("env", env_pairs, default=()),
    Field("gpus", _gpus, default=1),
    Field("wait_for_gpus", duration(positive=True), default=None),
    Field("batch", section(Batch, BATCH), default=None),
    Field("lr", section(LearningRate, LR), default=None),
    Field("deepspeed", section(DeepSpeedCfg, DEEPSPEED), default=None),
    Field("accelerate", accelerate.section, default=None),
    Field("checkpoints", _checkpoints, default=None),
    Field("nodes", section(Nodes, NODES), default=Nodes()),
    Field("limits", section(Limits, LIMITS), default=Limits()),
    Field("monitor", section(Monitor, MONITOR), default=Monitor()),
    Field("logs", section(Logs, LOGS), default=Logs()),
    Field("metrics", section(Metrics, METRICS), default=None),
    Field("stop_grace", duration(), default=30.0),
    Field("trainer", choice(TRAINERS), default="auto"),
    Field("containment", lambda node, key, ctx: "off" if scalar(node, key, ctx, "auto, cgroup or off")
          is False else choice(CONTAINMENTS)(node, key, ctx), default="auto"),  # YAML 1.1: off is False
    Field("ladder", _ladder, default=((), False), into=("ladder", "ladder_given")),
    Field("restarts", section(Restarts, RESTARTS), default=Restarts()),
    Field("progress", _nonempty(ProgressPatterns, PROGRESS), default=None),
    Field("success", _nonempty(SuccessEvidence, SUCCESS), default=None),
    Field("nan_patience", integer(1), default=1),
    Field("startup_window", duration(), default=600.0),
    *modelspec.FIELDS,
)


def _node_view(root: Node, ctx: Ctx, values: dict, env: Mapping[str, str]):
    """(nodes, node): the section with shared_dir's default, and this guardrun's NodeView."""
    section_value = values["nodes"]
    if section_value.shared_dir is None and values["checkpoints"] is not None:
        section_value = replace(section_value, shared_dir=values["checkpoints"].dir / ".guardrun")
    try:
        view = nodes.resolve(section_value, env, nodes.hostnames)
    except nodes.NodeError as err:
        if not (err.no_rank and ctx.missing is not None):
            _fail_at_nodes(root, ctx, err.key, str(err))
        ctx.missing.append(f"{err} (shown as node rank 0)")
        view = nodes.resolve(section_value, {**env, nodes.RANK_ENV: "0"}, nodes.hostnames)
    if view.multi and values["launcher"] not in multinode.LAUNCHERS:
        _fail_at_nodes(root, ctx, "launcher", f"launcher: {values['launcher']} runs one process: {view.count} "
                       "nodes need one of " + ", ".join(multinode.LAUNCHERS))
    machines = values["accelerate"]
    if view.multi and machines is not None and (machines.num_machines not in (1, view.count) or
                                                machines.machine_rank is not None or machines.main_process_ip):
        _fail_at_nodes(root, ctx, "accelerate", f"with nodes: ({view.count} nodes) guardrun sets num_machines, "
                       "machine_rank and main_process_ip/port from it: remove them from `accelerate:`")
    return section_value, view


def _fail_at_nodes(root: Node, ctx: Ctx, key: str, message: str) -> NoReturn:
    """A problem of the `nodes:` section as a whole (or of SLURM's environment): its line."""
    where = next((key_node for name, key_node, _ in pairs(root, "", ctx) if name == "nodes"), None)
    raise RecipeError(ctx.file, line_of(where) if where is not None else 1, key, message)


def _check_target(root: Node, ctx: Ctx, values: dict) -> None:
    """Exactly one of `script:` and `module:`; `command:` instead with `launcher: command`."""
    if modelspec.check_command(root, ctx, values):
        return
    if values["script"] is not None and values["module"] is not None:
        module_node = next(key_node for name, key_node, _ in pairs(root, "", ctx) if name == "module")
        ctx.fail(module_node, "module", "give either `script:` or `module:`, not both")
    if values["script"] is None and values["module"] is None:
        ctx.fail(root, "script", "required key missing: give `script:` (a file, relative to workdir) "
                 "or `module:` (run as python -m)")


def _check_rungs_apply(root: Node, ctx: Ctx, recipe: Recipe) -> None:
    """A rung that changes what the recipe does not set would silently do nothing."""
    needs = {"batch": ("changes the micro-batch", recipe.batch), "lr": ("scales the learning rate", recipe.lr)}
    for index, rung in enumerate(recipe.ladder):
        hf_key = next((key for key in HF_RUNG_FLAGS if getattr(rung, key) is not None), None)
        if recipe.trainer == "plain" and hf_key:
            ctx.fail(_rung_value_node(root, ctx, index, hf_key), f"ladder[{index}].{hf_key}",
                     f"this rung passes --{HF_RUNG_FLAGS[hf_key]}, an HF TrainingArguments flag, but the "
                     "recipe says `trainer: plain`: give your script's own flag in the rung's `args:`")
        for name, (does, section_value) in needs.items():
            if getattr(rung, name) is not None and section_value is None:
                node = _rung_value_node(root, ctx, index, name)
                ctx.fail(node, f"ladder[{index}].{name}",
                         f"this rung {does}, but the recipe has no `{name}:` section to change")


def _rung_value_node(root: Node, ctx: Ctx, index: int, name: str) -> Node:
    ladder = next(value for key, _, value in pairs(root, "", ctx) if key == "ladder")
    rung = ladder.value[index]
    return next(value for key, _, value in pairs(rung, "", ctx) if key == name)
