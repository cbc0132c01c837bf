"""The `ladder:` of a recipe: rungs, each saying which failures it answers and what it changes.

ladder.py decides which rung a failure history takes; this module only reads and
checks what the user wrote.
"""
from __future__ import annotations

import difflib

from yaml.nodes import Node

from .failures import RUNG_KINDS, Kind
from .spec import RUNG_CHANGES, Rung
from .units import is_number
from .yamlnodes import (
    Ctx,
    Field,
    boolean,
    env_pairs,
    integer,
    items,
    kind_of,
    line_of,
    mapping_args,
    number,
    read_fields,
    scalar,
)

#: The kinds a rung may answer, in the order DESIGN.md lists them (for messages).
RUNG_KIND_NAMES = tuple(kind.value for kind in Kind if kind in RUNG_KINDS)
#: Rung keys rendered as an HF TrainingArguments flag, and the flag each becomes (trainer.py).
HF_RUNG_FLAGS = {"gradient_checkpointing": "gradient_checkpointing", "save_only_model": "save_only_model",
                 "dataloader_workers": "dataloader_num_workers"}


def _on(node: Node, key: str, ctx: Ctx) -> tuple[Kind, ...]:
    """`on: cuda_oom` or `on: [cuda_oom, host_oom]`."""
    if node.id == "scalar":
        return (_kind(node, key, ctx),)
    nodes = items(node, key, ctx, "a failure kind or a list of them, like [cuda_oom]")
    if not nodes:
        ctx.fail(node, key, f"expected at least one failure kind ({', '.join(RUNG_KIND_NAMES)})")
    kinds: list[Kind] = []
    for index, item in enumerate(nodes):
        kind = _kind(item, f"{key}[{index}]", ctx)
        if kind in kinds:
            ctx.fail(item, f"{key}[{index}]", f"{kind} is listed twice")
        kinds.append(kind)
    return tuple(kinds)


def _kind(node: Node, key: str, ctx: Ctx) -> Kind:
    value = scalar(node, key, ctx, "a failure kind")
    allowed = ", ".join(RUNG_KIND_NAMES)
    if isinstance(value, str) and value in RUNG_KIND_NAMES:
        return Kind(value)
    if isinstance(value, str) and value in {kind.value for kind in Kind}:
        ctx.fail(node, key, f"{value} never changes the configuration (guardrun stops on it); "
                 f"a rung may answer {allowed}")
    close = difflib.get_close_matches(str(value), RUNG_KIND_NAMES, n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    ctx.fail(node, key, f"unknown failure kind {kind_of(node)}{hint}; expected one of {allowed}")


def _halve_or(convert, what: str, halve_as: object):
    """'halve' (stored as `halve_as`) or whatever `convert` accepts."""
    def read(node: Node, key: str, ctx: Ctx):
        if node.id == "scalar" and node.value == "halve":
            return halve_as
        if node.id == "scalar" and node.tag == "tag:yaml.org,2002:str" and not is_number(node.value):
            ctx.fail(node, key, f"expected {what}, got {kind_of(node)}")
        return convert(node, key, ctx)
    return read


RUNG = (
    Field("on", _on, hint=f"the failure kinds this rung answers, like [cuda_oom] "
                          f"({', '.join(RUNG_KIND_NAMES)})"),
    Field("gpus", integer(1), default=None),
    Field("batch", _halve_or(integer(1), "halve or a micro-batch >= 1", "halve"), default=None),
    Field("lr", _halve_or(number(positive=True), "halve or a positive factor, like 0.5", 0.5), default=None),
    Field("gradient_checkpointing", boolean, default=None),
    Field("zero_stage", integer(0, 3), default=None),
    Field("zero3_offload", boolean, default=None),
    Field("offload_pin_memory", boolean, default=None),
    Field("gather_16bit_on_save", boolean, default=None),
    Field("save_only_model", boolean, default=None),
    Field("dataloader_workers", integer(0), default=None),
    Field("args", mapping_args, default=()),
    Field("env", env_pairs, default=()),
)


def read_rung(node: Node, key: str, ctx: Ctx) -> Rung:
    rung = Rung(line=line_of(node), **read_fields(node, key, ctx, RUNG, what="a rung like "
                                                  "{on: [cuda_oom], batch: halve}"))
    defaults = Rung(on=rung.on, line=rung.line)
    if rung == defaults:
        ctx.fail(node, key, "this rung changes nothing: add what it changes besides `on`, one of "
                 + ", ".join(RUNG_CHANGES))
    return rung


def read_ladder(node: Node, key: str, ctx: Ctx) -> tuple[Rung, ...]:
    """The rungs in order; `ladder: []` is an empty ladder (no degrading at all)."""
    nodes = items(node, key, ctx, "a list of rungs like - {on: [cuda_oom], batch: halve}")
    return tuple(read_rung(item, f"{key}[{index}]", ctx) for index, item in enumerate(nodes))

