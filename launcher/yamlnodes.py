"""Walking a composed YAML node tree, so that every error can name its file, line and key.

`yaml.safe_load` returns plain dicts and forgets where each value was written; a recipe
error that cannot say "job.yaml:12: ladder[1].on" sends the user hunting. So the recipe
is composed (`yaml.compose`) and walked node by node; scalars are converted with the
SafeLoader's own constructor, so `true`, `1.5`, `null` mean what YAML says they mean.

Keys are read from the node's raw text, never constructed: YAML 1.1 reads a bare `on`
key as the boolean True, and `on:` is what a ladder rung is keyed by.
"""
from __future__ import annotations

import difflib
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, NoReturn, Sequence

import yaml
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from .units import format_bytes, parse_duration, parse_size

#: Where a command-line override's values come from (launcher/overrides.py), and the line
#: their nodes report (a file's lines start at 1).
COMMAND_LINE = "<command line>"
COMMAND_LINE_LINE = 0
_ENV_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_SCALAR_TAGS = {"tag:yaml.org,2002:" + t for t in ("str", "int", "float", "bool")}


class RecipeError(Exception):
    """A recipe problem the user can fix: `str(err)` is `path:line: key: message`, or
    `<command line>: key: message` for a value an override set (its line is 0)."""

    def __init__(self, path: str | Path, line: int, key: str, message: str):
        self.path = Path(path)
        self.line = line
        self.key = key
        self.message = message
        super().__init__(str(self))

    def __str__(self) -> str:
        where = COMMAND_LINE if self.line == COMMAND_LINE_LINE else f"{self.path}:{self.line}"
        return f"{where}: {self.key}: {self.message}"


@dataclass(frozen=True)
class Ctx:
    """What converters need besides the node: the file (for errors) and the workdir."""

    file: Path                 # the recipe as the user named it
    loader: yaml.SafeLoader    # constructs scalars the way safe_load would
    workdir: Path              # absolute; relative paths in the recipe resolve against it
    missing: list[str] | None = None  # a list: missing paths are collected here, not raised

    def fail(self, node: Node, key: str, message: str) -> NoReturn:
        raise RecipeError(self.file, line_of(node), key, message)

    def fail_or_warn(self, node: Node, key: str, message: str) -> None:
        """A missing path: an error, or a warning when loading for `guardrun plan`."""
        if self.missing is None:
            self.fail(node, key, message)
        self.missing.append(str(RecipeError(self.file, line_of(node), key, message)))

    def value(self, node: Node, key: str) -> object:
        """The Python value of a node, as yaml.safe_load would give it."""
        try:
            return self.loader.construct_object(node, deep=True)
        except yaml.constructor.ConstructorError as err:  # an unknown tag like !python/name
            self.fail(node, key, f"invalid YAML: {err.problem}")
        except ValueError as err:  # a date-like scalar that is no date: 2024-13-45
            self.fail(node, key, f"cannot read {node.value!r}: {err} (quote it to keep it as text)")


Converter = Callable[[Node, str, Ctx], object]
_REQUIRED = object()


@dataclass(frozen=True)
class Field:
    """One key of a mapping: how to convert it and what it is when absent.

    `into` names the dataclass fields it fills (default: the key itself); a converter
    for several fields returns a tuple in that order, and so does its default.
    """

    key: str
    convert: Converter
    default: object = _REQUIRED
    default_from: Callable[[Ctx], object] | None = None  # a default that depends on the file
    into: tuple[str, ...] = ()
    hint: str = ""  # said when a required key is missing

    @property
    def targets(self) -> tuple[str, ...]:
        return self.into or (self.key,)

    @property
    def required(self) -> bool:
        return self.default is _REQUIRED and self.default_from is None


def line_of(node: Node) -> int:
    return node.start_mark.line + 1


def line_in_file(file: Path, workdir: Path, keys: tuple[str, ...], first_item: bool = False) -> int:
    """The line of `keys`' value (a path of mapping keys: ("limits", "host_memory")) in a
    recipe file composed again, for errors found after loading; with `first_item`, of a
    list value's first item. 1 if it cannot be found (the file changed since)."""
    try:
        node, loader = compose(file)
        ctx = Ctx(file=file, loader=loader, workdir=workdir)
        for depth, key in enumerate(keys):
            found = [value for name, _key, value in pairs(node, ".".join(keys[:depth]), ctx) if name == key]
            if not found:
                return 1
            node = found[0]
    except RecipeError:
        return 1
    items = getattr(node, "value", None)
    if first_item and isinstance(items, list) and items:
        node = items[0]
    return line_of(node)


def compose(file: Path) -> tuple[MappingNode, yaml.SafeLoader]:
    """The recipe's top-level mapping node; unreadable, invalid or empty files raise."""
    try:
        text = file.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        reason = getattr(err, "strerror", None) or str(err)
        raise RecipeError(file, 1, "recipe", f"cannot read the file: {reason}") from None
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.MarkedYAMLError as err:
        raise RecipeError(file, *_yaml_problem(err)) from None
    except yaml.YAMLError as err:
        raise RecipeError(file, 1, "yaml", f"invalid YAML: {err}") from None
    if root is None:
        raise RecipeError(file, 1, "recipe", "the file is empty; a recipe needs at least "
                          "`launcher:` and `script:` (or `module:`)")
    if not isinstance(root, MappingNode):
        raise RecipeError(file, line_of(root), "recipe", "the top level must be a mapping of keys "
                          f"like `launcher: torchrun`, got {kind_of(root)}")
    return root, yaml.SafeLoader("")


def _yaml_problem(err: yaml.MarkedYAMLError) -> tuple[int, str, str]:
    """(line, key, message) for YAML's own error, at the line YAML blames."""
    mark = err.problem_mark or err.context_mark
    line = mark.line + 1 if mark else 1
    message = f"invalid YAML: {err.problem or err.context}"
    if err.problem and err.context:  # e.g. "while parsing a flow sequence (from line 3): ..."
        start = err.context_mark.line + 1 if err.context_mark else line
        where = f" (from line {start})" if start != line else ""
        message = f"invalid YAML: {err.context}{where}: {err.problem}"
    return line, "yaml", message


def kind_of(node: Node) -> str:
    """How a message names a node's shape: 'a list', 'a mapping', or the scalar's text."""
    if isinstance(node, SequenceNode):
        return "a list"
    if isinstance(node, MappingNode):
        return "a mapping"
    if node.tag == "tag:yaml.org,2002:null":
        return "nothing (null)"
    if node.tag == "tag:yaml.org,2002:str":
        return repr(node.value)
    if not node.tag.startswith("tag:yaml.org,2002:"):
        return f"{node.value!r} tagged {node.tag}"
    return str(node.value)  # a number or boolean, as written


def join(parent: str, key: str) -> str:
    return f"{parent}.{key}" if parent else key


def pairs(node: Node, key: str, ctx: Ctx, what: str = "a mapping") -> list[tuple[str, Node, Node]]:
    """(name, key node, value node) of a mapping, in file order; duplicates are errors."""
    if not isinstance(node, MappingNode):
        ctx.fail(node, key or "recipe", f"expected {what}, got {kind_of(node)}")
    seen: dict[str, int] = {}
    out = []
    for key_node, value_node in node.value:
        if not isinstance(key_node, ScalarNode):
            ctx.fail(key_node, key or "recipe", f"keys must be plain names, got {kind_of(key_node)}")
        name = str(key_node.value)
        if name in seen:
            ctx.fail(key_node, join(key, name), f"duplicate key (first given at line {seen[name]})")
        seen[name] = line_of(key_node)
        out.append((name, key_node, value_node))
    return out


def unknown_key(name: str, known: Sequence[str]) -> str:
    close = difflib.get_close_matches(name, known, n=1)
    if close:
        return f"unknown key {name!r} (did you mean {close[0]!r}?)"
    return f"unknown key {name!r} (known keys: {', '.join(known)})"


def read_fields(node: Node, key: str, ctx: Ctx, fields: Sequence[Field],
                what: str = "a mapping") -> dict[str, object]:
    """Convert a mapping through a table of Fields -> keyword arguments for a dataclass.

    Keys are converted in file order, so the first problem in the file is the one raised.
    """
    table = {field.key: field for field in fields}
    values: dict[str, object] = {}
    for name, key_node, value_node in pairs(node, key, ctx, what):
        field = table.get(name)
        if field is None:
            ctx.fail(key_node, join(key, name), unknown_key(name, list(table)))
        _store(values, field, field.convert(value_node, join(key, name), ctx))
    for field in fields:
        if field.targets[0] in values:
            continue
        if field.required:
            hint = f": {field.hint}" if field.hint else ""
            ctx.fail(node, join(key, field.key), f"required key missing{hint}")
        default = field.default_from(ctx) if field.default_from else field.default
        _store(values, field, default)
    return values


def _store(values: dict[str, object], field: Field, converted: object) -> None:
    if len(field.targets) == 1:
        values[field.targets[0]] = converted
        return
    assert isinstance(converted, tuple) and len(converted) == len(field.targets)
    values.update(zip(field.targets, converted))


def items(node: Node, key: str, ctx: Ctx, what: str) -> list[Node]:
    """The item nodes of a sequence."""
    if not isinstance(node, SequenceNode):
        ctx.fail(node, key, f"expected {what}, got {kind_of(node)}")
    return list(node.value)


def scalar(node: Node, key: str, ctx: Ctx, what: str) -> object:
    """The value of a scalar node; a list or mapping here is an error naming `what`."""
    if not isinstance(node, ScalarNode):
        ctx.fail(node, key, f"expected {what}, got {kind_of(node)}")
    return ctx.value(node, key)


# Converters shared by the recipe and its ladder rungs.

def mapping_args(node: Node, key: str, ctx: Ctx,
                 what: str = "a mapping of arguments") -> tuple[tuple[str, object], ...]:
    """`{key: value}` args. Values stay YAML values (bool, number, str, null), and a list
    of those becomes a tuple, so that a Recipe stays immutable all the way down."""
    out = []
    for name, _key_node, value_node in pairs(node, key, ctx, what):
        where = f"{key}.{name}"
        if value_node.id == "sequence":
            values = [scalar(item, f"{where}[{i}]", ctx, "a single value")
                      for i, item in enumerate(value_node.value)]
            out.append((name, tuple(values)))
        else:
            out.append((name, scalar(value_node, where, ctx, "a value or a list of values")))
    return tuple(out)


def env_pairs(node: Node, key: str, ctx: Ctx) -> tuple[tuple[str, str], ...]:
    """Environment variables. Numbers and booleans keep their text as written (`1`, `false`)."""
    out = []
    for name, key_node, value_node in pairs(node, key, ctx, "a mapping of NAME: value"):
        where = f"{key}.{name}"
        if not _ENV_NAME_RE.match(name):
            ctx.fail(key_node, where, "expected a variable name of letters, digits and '_'")
        if value_node.id != "scalar" or value_node.tag not in _SCALAR_TAGS:
            ctx.fail(value_node, where, f"expected a string, number or boolean, got {kind_of(value_node)}")
        out.append((name, str(value_node.value)))
    return tuple(out)


# Typed scalar converters: each returns a Converter, so a table entry reads
# `Field("per_device", integer(1))`.

def integer(minimum: int | None = None, maximum: int | None = None) -> Converter:
    what = _range_text("an integer", minimum, maximum)

    def convert(node: Node, key: str, ctx: Ctx) -> int:
        value = scalar(node, key, ctx, what)
        if isinstance(value, bool) or not isinstance(value, int) or not _within(value, minimum, maximum):
            ctx.fail(node, key, f"expected {what}, got {kind_of(node)}")
        return value
    return convert


def number(minimum: float | None = None, maximum: float | None = None, *, positive: bool = False) -> Converter:
    what = "a positive number" if positive else _range_text("a number", minimum, maximum)

    def convert(node: Node, key: str, ctx: Ctx) -> float:
        value = _as_float(scalar(node, key, ctx, what))
        if value is None or not _within(value, minimum, maximum) or (positive and value <= 0):
            ctx.fail(node, key, f"expected {what}, got {kind_of(node)}")
        return value
    return convert


def _as_float(value: object) -> float | None:
    """int, float, or a numeric string: PyYAML (YAML 1.1) reads `2e-4` as a string."""
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        return None
    try:
        result = float(value)
    except ValueError:
        return None
    return result if math.isfinite(result) else None


def boolean(node: Node, key: str, ctx: Ctx) -> bool:
    value = scalar(node, key, ctx, "true or false")
    if not isinstance(value, bool):
        ctx.fail(node, key, f"expected true or false, got {kind_of(node)}")
    return value


def text(node: Node, key: str, ctx: Ctx) -> str:
    value = scalar(node, key, ctx, "a string")
    if not isinstance(value, str) or not value.strip():
        ctx.fail(node, key, f"expected a non-empty string, got {kind_of(node)}")
    return value


def optional(convert: Converter) -> Converter:
    """`convert`, but an explicit null gives None."""
    def maybe(node: Node, key: str, ctx: Ctx) -> object:
        if isinstance(node, ScalarNode) and node.tag == "tag:yaml.org,2002:null":
            return None
        return convert(node, key, ctx)
    return maybe


def choice(options: Sequence[str]) -> Converter:
    def convert(node: Node, key: str, ctx: Ctx) -> str:
        value = scalar(node, key, ctx, "one of " + ", ".join(options))
        if value not in options:
            close = difflib.get_close_matches(str(value), options, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            ctx.fail(node, key, f"expected one of {', '.join(options)}, got {kind_of(node)}{hint}")
        return value
    return convert


def size(*, allow_percent: bool = True) -> Converter:
    def convert(node: Node, key: str, ctx: Ctx):
        value = scalar(node, key, ctx, "a size like 4GiB" + (" or 90%" if allow_percent else ""))
        try:
            return parse_size(value, allow_percent=allow_percent)
        except ValueError as err:
            ctx.fail(node, key, str(err))
    return convert


def size_bytes(minimum: int = 0) -> Converter:
    """An absolute size (no percent) as bytes, at least `minimum`."""
    def convert(node: Node, key: str, ctx: Ctx) -> int:
        value = size(allow_percent=False)(node, key, ctx).bytes
        if value < minimum:
            ctx.fail(node, key, f"expected a size of at least {format_bytes(minimum)}, got {kind_of(node)}")
        return value
    return convert


def duration(minimum: float = 0.0, maximum: float | None = None, *, positive: bool = False) -> Converter:
    def convert(node: Node, key: str, ctx: Ctx) -> float:
        value = scalar(node, key, ctx, "a duration like 30s")
        try:
            seconds = parse_duration(value)
        except ValueError as err:
            ctx.fail(node, key, str(err))
        if positive and seconds <= 0:
            ctx.fail(node, key, f"expected a duration above zero, got {kind_of(node)}")
        if not _within(seconds, minimum, maximum):
            ctx.fail(node, key, f"expected {_range_text('a duration', minimum, maximum)} seconds, "
                     f"got {kind_of(node)}")
        return seconds
    return convert


def _within(value: float, minimum: float | None, maximum: float | None) -> bool:
    return (minimum is None or value >= minimum) and (maximum is None or value <= maximum)


def _range_text(noun: str, minimum: float | None, maximum: float | None) -> str:
    if minimum is not None and maximum is not None:
        return f"{noun} from {minimum:g} to {maximum:g}"
    if minimum is not None:
        return f"{noun} >= {minimum:g}"
    if maximum is not None:
        return f"{noun} <= {maximum:g}"
    return noun
