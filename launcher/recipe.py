"""A recipe file -> a frozen Recipe, or one RecipeError naming file, line and key.

Each mapping in the file is read through a table of `Field`s (yamlnodes.py): adding a
top-level key is one entry in `TOP` plus one field of `Recipe`. The first problem found
is raised, in file order, except that `workdir` is read first because the other paths
are relative to it. The ladder's rungs live in rungs.py.
"""
from __future__ import annotations

import os
import re
import sys
from dataclasses import dataclass, replace
from pathlib import Path

from yaml.nodes import Node

from .rungs import Rung, read_ladder
from .units import Size
from .yamlnodes import (Converter, Ctx, Field, RecipeError, choice, compose, duration, env_pairs,
                        integer, items, kind_of, mapping_args, number, optional, pairs, read_fields,
                        scalar, size, text)

__all__ = ["Batch", "Checkpoints", "DeepSpeedCfg", "LearningRate", "Limits", "Monitor", "Recipe",
           "RecipeError", "Restarts", "Rung", "load_recipe"]

LAUNCHERS = ("torchrun", "deepspeed", "python")
_NAME_RE = re.compile(r"^[A-Za-z0-9._-]+$")
_MODULE_RE = re.compile(r"^[A-Za-z_]\w*(\.[A-Za-z_]\w*)*$")


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


@dataclass(frozen=True)
class Limits:
    host_memory: Size | None = None    # the job's process tree (PSS); a percent of MemTotal
    min_available: Size | None = None  # MemAvailable floor for the whole machine
    vram: Size | None = None           # per GPU; a percent of that GPU's memory
    hang_after: float | None = None    # seconds without progress


@dataclass(frozen=True)
class Restarts:
    max: int = 8
    backoff: tuple[float, float] = (10.0, 300.0)  # first wait, cap (seconds)


@dataclass(frozen=True)
class Monitor:
    interval: float = 0.5  # seconds between samples


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


def load_recipe(path: str | Path) -> Recipe:
    """Read and check a recipe file. Raises RecipeError on the first problem."""
    file = Path(path)
    root, loader = compose(file)
    ctx = Ctx(file=file, loader=loader, workdir=file.absolute().parent)
    for name, _key_node, value_node in pairs(root, "", ctx):
        if name == "workdir":
            ctx = replace(ctx, workdir=_workdir(value_node, "workdir", ctx))
    values = read_fields(root, "", ctx, TOP)
    _check_target(root, ctx, values)
    recipe = Recipe(path=file.absolute(), **values)
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
        ctx.fail(node, key, f"directory not found: {path} (relative to the recipe's folder {recipe_dir})")
    return path


def _existing_file(what: str) -> Converter:
    def convert(node: Node, key: str, ctx: Ctx) -> Path:
        path = _resolve(ctx.workdir, text(node, key, ctx))
        if not path.is_file():
            ctx.fail(node, key, f"{what} not found: {path} (relative paths start at workdir {ctx.workdir})")
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


def _pattern(node: Node, key: str, ctx: Ctx) -> str:
    value = text(node, key, ctx)
    try:
        groups = re.compile(value).groups
    except re.error as err:
        ctx.fail(node, key, f"not a valid regular expression: {err}")
    if groups != 1:
        ctx.fail(node, key, f"expected a regex with exactly one group (the step), like "
                 f"'checkpoint-(\\d+)'; '{value}' has {groups}")
    return value


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
    Field("config", _existing_file("DeepSpeed config"), hint="the DeepSpeed JSON file, relative to workdir"),
    Field("arg", text, default=DeepSpeedCfg.arg),
)
CHECKPOINTS = (
    Field("dir", _dir_in_workdir, hint="the folder the job saves checkpoints in, relative to workdir"),
    Field("resume_arg", optional(text), default=Checkpoints.resume_arg),
    Field("pattern", _pattern, default=None),
)
LIMITS = (
    Field("host_memory", size(), default=None),
    Field("min_available", size(), default=None),
    Field("vram", size(), default=None),
    Field("hang_after", duration(positive=True), default=None),
)
RESTARTS = (
    Field("max", integer(0), default=Restarts.max),
    Field("backoff", _backoff, default=Restarts.backoff),
)
MONITOR = (Field("interval", duration(0.05, 60.0), default=Monitor.interval),)

#: Every top-level key. A new key: one entry here and one field of Recipe.
TOP = (
    Field("name", _name, default_from=_default_name),
    Field("workdir", _workdir, default_from=lambda ctx: ctx.workdir),
    Field("launcher", choice(LAUNCHERS), hint="how to start the job: torchrun, deepspeed or python"),
    Field("python", text, default=sys.executable),
    Field("script", _existing_file("script"), default=None),
    Field("module", _module, default=None),
    Field("args", _args, default=((), False), into=("args", "args_is_list")),
    Field("env", env_pairs, default=()),
    Field("gpus", _gpus, default=1),
    Field("batch", section(Batch, BATCH), default=None),
    Field("lr", section(LearningRate, LR), default=None),
    Field("deepspeed", section(DeepSpeedCfg, DEEPSPEED), default=None),
    Field("checkpoints", section(Checkpoints, CHECKPOINTS), default=None),
    Field("limits", section(Limits, LIMITS), default=Limits()),
    Field("monitor", section(Monitor, MONITOR), default=Monitor()),
    Field("stop_grace", duration(), default=30.0),
    Field("ladder", _ladder, default=((), False), into=("ladder", "ladder_given")),
    Field("restarts", section(Restarts, RESTARTS), default=Restarts()),
)


def _check_target(root: Node, ctx: Ctx, values: dict) -> None:
    """Exactly one of `script:` and `module:`."""
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
        for name, (does, section_value) in needs.items():
            if getattr(rung, name) is not None and section_value is None:
                node = _rung_value_node(root, ctx, index, name)
                ctx.fail(node, f"ladder[{index}].{name}",
                         f"this rung {does}, but the recipe has no `{name}:` section to change")


def _rung_value_node(root: Node, ctx: Ctx, index: int, name: str) -> Node:
    ladder = next(value for key, _, value in pairs(root, "", ctx) if key == "ladder")
    rung = ladder.value[index]
    return next(value for key, _, value in pairs(rung, "", ctx) if key == name)
