"""Recipe keys set on the command line: `guardrun run r.yaml batch.per_device=8 gpus=4`.

An override is `dotted.key=value`. The value is read as YAML (`8` an integer, `80%` and
`2e-4` text as in the file, `[0, 1]` a list, an empty value null) and set into the composed
recipe before it is read, a section the file lacks being made, so the whole recipe goes
through the same checks as a file: an unknown key or a bad value is the same error, named
`<command line>: batch.per_device: ...` instead of a file and line (`located`), also for
problems found after loading (`problem_at`: a python that is not there, a limit above the
machine's memory).
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Sequence

import yaml
from yaml.nodes import MappingNode, Node, ScalarNode

from .spec import Recipe
from .yamlnodes import COMMAND_LINE as SOURCE
from .yamlnodes import COMMAND_LINE_LINE as LINE
from .yamlnodes import RecipeError, kind_of, line_in_file

_MARK = yaml.Mark(SOURCE, 0, LINE - 1, 0, None, None)
_KEY_RE = re.compile(r"^[A-Za-z_][\w-]*(\.[A-Za-z_][\w-]*)*$")
_STR, _MAP, _NULL = ("tag:yaml.org,2002:" + tag for tag in ("str", "map", "null"))


class CommandLineError(RecipeError):
    """A problem with an override: `str(err)` is `<command line>: key: message`."""

    def __init__(self, key: str, message: str):
        super().__init__(SOURCE, LINE, key, message)


@dataclass(frozen=True)
class Override:
    keys: tuple[str, ...]  # ("batch", "per_device")
    value: Node            # composed, every node marked as the command line's
    text: str              # as given: batch.per_device=8

    @property
    def key(self) -> str:
        return ".".join(self.keys)


def is_override(token: str) -> bool:
    """Whether a command-line word is KEY=VALUE (a recipe path is not, unless it is a file)."""
    key, equals, _value = token.partition("=")
    return bool(equals) and bool(_KEY_RE.match(key))


def parse(tokens: Sequence[str]) -> tuple[Override, ...]:
    """The overrides in the order given; a word that is not KEY=VALUE, a key given twice or a
    value that is not YAML raises CommandLineError."""
    out: list[Override] = []
    for token in tokens:
        if not is_override(token):
            raise CommandLineError(token.partition("=")[0] or token,
                                   f"expected KEY=VALUE like batch.per_device=8, got {token!r}")
        key, _, text = token.partition("=")
        if any(each.key == key for each in out):
            raise CommandLineError(key, "given twice")
        out.append(Override(tuple(key.split(".")), _value(key, text), token))
    return tuple(out)


def _value(key: str, text: str) -> Node:
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError as err:
        problem = getattr(err, "problem", None) or str(err)
        raise CommandLineError(key, f"invalid YAML value {text!r}: {problem} (quote it)") from None
    node = node if node is not None else ScalarNode(_NULL, "")
    _mark(node)
    return node


def _mark(node: Node) -> None:
    node.start_mark = node.end_mark = _MARK
    children = node.value if isinstance(node.value, list) else []
    for child in children:
        for each in (child if isinstance(child, tuple) else (child,)):
            _mark(each)


def apply(root: MappingNode, overrides: Sequence[Override]) -> None:
    """Set each override into the composed recipe `root` (changed in place)."""
    for each in overrides:
        node = root
        for depth, key in enumerate(each.keys[:-1]):
            child = _get(node, key)
            if child is None:
                child = MappingNode(_MAP, [], start_mark=_MARK, end_mark=_MARK)
                _set(node, key, child)
            elif not isinstance(child, MappingNode):
                where = ".".join(each.keys[:depth + 1])
                raise CommandLineError(each.key, f"the recipe's {where} is {kind_of(child)}, "
                                       "not a mapping of keys to set one in")
            node = child
        _set(node, each.keys[-1], each.value)


def _get(node: MappingNode, key: str) -> Node | None:
    return next((value for key_node, value in node.value if key_node.value == key), None)


def _set(node: MappingNode, key: str, value: Node) -> None:
    """Replace the value of `key` (keeping the file's key), or add the key at the end."""
    for index, (key_node, _old) in enumerate(node.value):
        if key_node.value == key:
            node.value[index] = (key_node, value)
            return
    node.value.append((ScalarNode(_STR, key, start_mark=_MARK, end_mark=_MARK), value))


def located(err: RecipeError) -> RecipeError:
    """The error, named `<command line>` when it is about a value an override set."""
    if err.line == LINE and not isinstance(err, CommandLineError):
        return CommandLineError(err.key, err.message)
    return err


def problem_at(recipe: Recipe, keys: tuple[str, ...], message: str, first_item: bool = False) -> str:
    """`file:line: key: message` for a problem found after loading (the line looked up in the
    file again), or `<command line>: key: message` when an override set that key or a
    section above it."""
    key = ".".join(keys)
    given = [text.partition("=")[0] for text in recipe.overrides]
    if any(key == each or key.startswith(each + ".") for each in given):
        return str(CommandLineError(key, message))
    return str(RecipeError(recipe.path, line_in_file(recipe.path, recipe.workdir, keys, first_item), key, message))
