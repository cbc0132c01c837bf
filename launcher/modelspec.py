"""Recipe keys for the memory preflight and for launchers that are not Python scripts.

`model:` says what the memory estimate needs (estimate.py); `preflight:` turns the
check off; `command:`, `args_style:`, `args_group:` and `ranks_env:` let a recipe run
a tool's own command line (`llamafactory-cli train cfg.yaml key=value`,
`xtuner train CONFIG --cfg-options k=v`). Every key is optional; each converter names
file, line and key on a mistake, like the rest of the recipe (yamlnodes.py).
"""
from __future__ import annotations

import re

from yaml.nodes import Node

from .spec import Model
from .yamlnodes import (
    Ctx,
    Field,
    boolean,
    choice,
    integer,
    items,
    kind_of,
    number,
    pairs,
    read_fields,
    scalar,
    text,
)

PRECISIONS = ("bf16", "fp16", "fp32")
TRAINABLE = ("full", "lora")
LORA_TARGETS = ("all-linear", "attention")
OFFLOAD = ("none", "optimizer", "all")
ARGS_STYLES = ("flags", "key=value")
_ENV_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def _params(node: Node, key: str, ctx: Ctx) -> float:
    value = number(positive=True)(node, key, ctx)
    if value < 1e6:
        ctx.fail(node, key, f"expected a parameter count like 7e9 (at least 1e6), got {kind_of(node)}")
    return value


MODEL = (
    Field("path", text, default=None),
    Field("params", _params, default=None),
    Field("vision_params", number(minimum=0), default=None),
    Field("vocab_size", integer(1), default=None),
    Field("trainable", choice(TRAINABLE), default=Model.trainable),
    Field("lora_rank", integer(1), default=Model.lora_rank),
    Field("lora_targets", choice(LORA_TARGETS), default=Model.lora_targets),
    Field("vision_tower_frozen", boolean, default=Model.vision_tower_frozen),
    Field("precision", choice(PRECISIONS), default=Model.precision),
    Field("load_precision", choice(PRECISIONS), default=None),
    Field("seq_len", integer(1), default=Model.seq_len),
    Field("gradient_checkpointing", boolean, default=None),
    Field("zero_stage", integer(0, 3), default=None),
    Field("offload", choice(OFFLOAD), default=None),
)


def model(node: Node, key: str, ctx: Ctx) -> Model:
    return Model(**read_fields(node, key, ctx, MODEL, what="a mapping like {params: 7e9, trainable: lora}"))


def on_off(node: Node, key: str, ctx: Ctx) -> bool:
    """`on` / `off` (YAML 1.1 reads them as booleans), `true` / `false`."""
    value = scalar(node, key, ctx, "on or off")
    if isinstance(value, bool):
        return value
    if value in ("on", "off"):
        return value == "on"
    ctx.fail(node, key, f"expected on or off, got {kind_of(node)}")


def command(node: Node, key: str, ctx: Ctx) -> tuple[str, ...]:
    """`command: [llamafactory-cli, train, cfg.yaml]`: the program and its fixed arguments."""
    nodes = items(node, key, ctx, "a list like [llamafactory-cli, train, cfg.yaml]")
    if not nodes:
        ctx.fail(node, key, "expected at least the program to run, like [llamafactory-cli, train]")
    tokens = []
    for index, item in enumerate(nodes):
        value = scalar(item, f"{key}[{index}]", ctx, "a string")
        if not isinstance(value, str) or not value.strip():
            ctx.fail(item, f"{key}[{index}]", f"expected a non-empty string, got {kind_of(item)}")
        tokens.append(value)
    return tuple(tokens)


def env_name(node: Node, key: str, ctx: Ctx) -> str:
    value = text(node, key, ctx)
    if not _ENV_NAME_RE.match(value):
        ctx.fail(node, key, f"expected a variable name like NPROC_PER_NODE, got {kind_of(node)}")
    return value


def group_flag(node: Node, key: str, ctx: Ctx) -> str:
    value = text(node, key, ctx)
    if not value.startswith("-"):
        ctx.fail(node, key, f"expected a flag like --cfg-options, got {kind_of(node)}")
    return value


#: Top-level fields this module adds to the recipe (recipe.TOP takes them in).
FIELDS = (
    Field("command", command, default=()),
    Field("args_style", choice(ARGS_STYLES), default="flags"),
    Field("args_group", group_flag, default=None),
    Field("ranks_env", env_name, default=None),
    Field("model", model, default=None),
    Field("preflight", on_off, default=True),
)


def check_command(root: Node, ctx: Ctx, values: dict) -> bool:
    """`launcher: command` takes `command:` and neither `script:` nor `module:`.

    True when the launcher is `command` and the recipe is consistent (the caller's
    script/module check does not apply); False for the other launchers.
    """
    given = {name: key_node for name, key_node, _ in pairs(root, "", ctx)}
    if values.get("args_group") and values.get("args_style") != "key=value":
        ctx.fail(given["args_group"], "args_group", "args_group only applies with `args_style: key=value`")
    if values.get("launcher") != "command":
        if values.get("command"):
            ctx.fail(given["command"], "command", "`command:` needs `launcher: command` "
                     f"(the launcher is {values.get('launcher')}, which runs `script:` or `module:`)")
        return False
    for other in ("script", "module"):
        if values.get(other) is not None:
            ctx.fail(given[other], other, f"`launcher: command` runs `command:` as given; remove `{other}:`")
    if not values.get("command"):
        ctx.fail(root, "command", "required key missing: `launcher: command` needs `command:`, "
                 "like [llamafactory-cli, train, examples/train_full/qwen2vl_full_sft.yaml]")
    return True

