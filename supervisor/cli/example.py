"""`guardrun example [NAME]`: the ready recipes installed with guardrun (guardrun.recipes,
the repository's recipes/ folder).

Without NAME: each recipe's name (its file's stem) and a one-line description, the first line
of its leading comment. With NAME: the recipe, printed so that it works from wherever the
copy is written (`guardrun example demo_cpu > my.yaml`). A recipe's paths are read from its
workdir, which is the recipe's own folder when `workdir` is `.` (or absent): a copy moves
that folder. So, in such a recipe only, two kinds of value are rewritten, found through
the YAML's nodes so that the comments and the layout stay as they are:

- a value naming a file that ships beside the recipes (the demo's `script: demo_train.py`)
  becomes that file's absolute path in the installed package;
- a relative path that climbs out of the recipes folder to the clone's root
  (`../build/demo-cpu`) drops its `../`: it lands under the copy's folder instead.

Recipes for other projects (`workdir: ~/LLaVA`) are printed as they are: their paths start
at the user's own clone. The copy opens with a header: where it comes from, what was
rewritten, or that workdir is the user's to set.
"""
from __future__ import annotations

import difflib
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path

import yaml
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from guardrun import recipes

BUNDLE = Path(recipes.__file__).parent
_PLAIN = re.compile(r"[\w./~+-]+")   # safe unquoted in block and flow style (if YAML reads it as a string)
_STR = "tag:yaml.org,2002:str"


class ExampleError(Exception):
    """No such example; the message names the ones there are."""


@dataclass(frozen=True)
class Example:
    name: str
    path: Path
    description: str


def examples(bundle: Path = BUNDLE) -> list[Example]:
    """The recipes in `bundle`, by name."""
    return [Example(path.stem, path, description(path.read_text()))
            for path in sorted(bundle.glob("*.yaml"))]


def description(text: str) -> str:
    """The first line of the leading comment; when its sentence runs on (into the next line,
    or past a closing `:`), up to its last `, ` or `: `: the clause left unfinished is dropped."""
    comment = []
    for line in text.splitlines():
        if not line.startswith("#"):
            break
        comment.append(line.lstrip("#").strip())
    if not comment or not comment[0]:
        return ""
    first = comment[0]
    runs_on = first.endswith(":") or (len(comment) > 1 and bool(comment[1]) and not first.endswith("."))
    cut = max(first.rfind(", "), first.rfind(": ")) if runs_on else -1
    return first[:cut] if cut > 0 else first


def find(name: str, bundle: Path = BUNDLE) -> Example:
    """The example called `name` (its stem; `name.yaml` too)."""
    found = {each.name: each for each in examples(bundle)}
    stem = name.removesuffix(".yaml")
    if stem in found:
        return found[stem]
    close = difflib.get_close_matches(stem, found, n=1)
    hint = f" (did you mean '{close[0]}'?)" if close else ""
    raise ExampleError(f"no example '{name}'{hint}; the examples: {', '.join(found)}")


def complete(ctx, param, incomplete: str) -> list[str]:
    """Shell completion for NAME."""
    return [each.name for each in examples() if each.name.startswith(incomplete)]


def listing(bundle: Path = BUNDLE) -> list[str]:
    """`guardrun example`: one line per recipe, then how to get one."""
    found = examples(bundle)
    width = max((len(each.name) for each in found), default=0)
    return ([f"{each.name:<{width}}  {each.description}" for each in found]
            + ["", "guardrun example NAME > my.yaml   writes one; its comment says what to set"])


def copy_text(example: Example) -> str:
    """The recipe as `guardrun example NAME` prints it: a header saying where it comes from
    and what was rewritten, then the recipe with its bundle-relative paths made to work from
    the copy's folder."""
    original = example.path.read_text()
    text, moved = relocate(original, example.path.parent)
    header = [f"# guardrun example {example.name}: a copy of {example.path}"]
    header += [f"# {old} -> {new}" + (" (installed with guardrun)" if os.path.isabs(new) else " (under this file's folder)")
               for old, new in dict.fromkeys(moved)]
    elsewhere = _elsewhere(yaml.compose(original, Loader=yaml.SafeLoader), example.path.parent)
    if elsewhere:
        header.append(f"# Before `guardrun run`: set workdir ({elsewhere}) to where that project is on this machine "
                      "(`guardrun plan` works as it is)")
    return "\n".join(header) + "\n" + text


def relocate(text: str, bundle: Path) -> tuple[str, list[tuple[str, str]]]:
    """`text` with its bundle-relative paths rewritten (see the module's docstring), and
    the (old, new) pairs, in file order. A recipe whose workdir is elsewhere is unchanged."""
    root = yaml.compose(text, Loader=yaml.SafeLoader)
    if not isinstance(root, MappingNode) or _elsewhere(root, bundle):
        return text, []
    edits = []
    for node in _values(root):
        new = _relocated(node.value, bundle)
        if new is not None:
            edits.append((node, new))
    for node, new in reversed(edits):
        written = new if _PLAIN.fullmatch(new) and yaml.safe_load(new) == new else json.dumps(new)
        text = text[:node.start_mark.index] + written + text[node.end_mark.index:]
    return text, [(node.value, new) for node, new in edits]


def _elsewhere(root: Node | None, folder: Path) -> str | None:
    """The recipe's `workdir` as written when it is not the recipe's own `folder`; None
    when it is (`.`, or no workdir)."""
    if isinstance(root, MappingNode):
        for key, value in root.value:
            if key.value == "workdir" and isinstance(value, ScalarNode):
                same = Path(os.path.normpath(folder / os.path.expanduser(value.value))) == folder
                return None if same else value.value
    return None


def _values(node: Node):
    """Every string scalar that is a value (never a key), in file order."""
    if isinstance(node, MappingNode):
        for _key, value in node.value:
            yield from _values(value)
    elif isinstance(node, SequenceNode):
        for item in node.value:
            yield from _values(item)
    elif isinstance(node, ScalarNode) and node.tag == _STR:
        yield node


def _relocated(value: str, bundle: Path) -> str | None:
    if not value or os.path.isabs(value) or value.startswith("~"):
        return None
    if value.startswith("../"):
        return value[len("../"):] or "."
    if (bundle / value).is_file():
        return str((bundle / value).resolve())
    return None
