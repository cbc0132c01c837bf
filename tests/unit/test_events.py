"""One event vocabulary (issue 14 §5): every journal event name lives in supervisor/core/events.py.

Read from the source (an AST walk over supervisor/): an `emit(...)` / `_attempt_event(...)`
call names its event as `events.X`, and no other string in supervisor/ spells an event
name out (`"attempt.ended"`, `"guardrun.attempt.ended"`): readers compare with the constants.
"""
from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

from guardrun.supervisor.core import events

ROOT = Path(__file__).resolve().parents[2]
SUPERVISOR = ROOT / "supervisor"
EMITTERS = {"emit", "_attempt_event"}

#: Files that still spell event names out; their owners convert them (issue 14 §5).
#: Shrink it as they do: a file listed here with nothing left to convert fails the test.
NOT_CONVERTED: set[str] = set()

#: Strings equal to an event name that stand for something else: `backoff` is also a state
#: (core.states), which the CLI spells when it reads state.json.
NOT_EVENTS = {"backoff"}


def _parents(tree: ast.AST) -> dict[ast.AST, ast.AST]:
    return {child: node for node in ast.walk(tree) for child in ast.iter_child_nodes(node)}


def _is_constant_name(node: ast.AST) -> bool:
    """`events.X` with X a name of core/events.py (or either arm of a conditional of two)."""
    if isinstance(node, ast.IfExp):
        return _is_constant_name(node.body) and _is_constant_name(node.orelse)
    return (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name)
            and node.value.id == "events" and getattr(events, node.attr, None) in events.ALL)


def _forwards_a_parameter(node: ast.AST, call: ast.Call, parents: dict[ast.AST, ast.AST]) -> bool:
    """`emit(event, **fields)` inside a function taking `event`: a wrapper passing its name on."""
    if not isinstance(node, ast.Name):
        return False
    scope = parents.get(call)
    while scope is not None and not isinstance(scope, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
        scope = parents.get(scope)
    if scope is None:
        return False
    arguments = scope.args
    names = [a.arg for a in (*arguments.posonlyargs, *arguments.args, *arguments.kwonlyargs)]
    return node.id in names


def _called(call: ast.Call) -> str | None:
    func = call.func
    return func.id if isinstance(func, ast.Name) else func.attr if isinstance(func, ast.Attribute) else None


def spelled_out(path: Path) -> list[str]:
    """What in one file names an event without core/events.py, as 'line: what'."""
    tree = ast.parse(path.read_text(), str(path))
    parents = _parents(tree)
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and _called(node) in EMITTERS and node.args:
            first = node.args[0]
            if not (_is_constant_name(first) or _forwards_a_parameter(first, node, parents)):
                found.append(f"{node.lineno}: {_called(node)}({ast.unparse(first)}, ...)")
        elif (isinstance(node, ast.Constant) and isinstance(node.value, str)
              and node.value.removeprefix(events.PREFIX) in events.ALL
              and node.value not in NOT_EVENTS):
            found.append(f"{node.lineno}: {node.value!r}")
    return sorted(found, key=lambda line: int(line.split(":")[0]))


def _sources() -> list[Path]:
    return [path for path in sorted(SUPERVISOR.rglob("*.py")) if path != SUPERVISOR / "core" / "events.py"]


def test_every_event_is_named_from_core_events():
    wrong = {}
    for path in _sources():
        relative = path.relative_to(ROOT).as_posix()
        found = spelled_out(path)
        if found and relative not in NOT_CONVERTED:
            wrong[relative] = found
    assert not wrong, "event names spelled out instead of events.X (supervisor/core/events.py):\n" + \
        "\n".join(f"{file}:{line}" for file, lines in wrong.items() for line in lines)


def test_the_not_converted_list_only_holds_files_left_to_convert():
    done = sorted(file for file in NOT_CONVERTED if not spelled_out(ROOT / file))
    assert not done, f"converted: take them off NOT_CONVERTED in this test: {done}"


def test_the_check_sees_a_spelled_out_name(tmp_path):
    """The walk is not vacuous: a literal in an emit, a literal compared, a conditional of two."""
    source = tmp_path / "probe.py"
    source.write_text(
        "from guardrun.supervisor.core import events\n"
        "def f(emit, event, row):\n"
        "    emit('attempt.ended', kind='x')\n"
        "    emit(events.ATTEMPT_ENDED if row else 'run.started')\n"
        "    emit(events.ATTEMPT_ENDED)\n"
        "    emit(event)\n"
        "    return row.get('event') == 'guardrun.run.finished'\n")
    assert spelled_out(source) == ["3: emit('attempt.ended', ...)", "3: 'attempt.ended'",
                                   "4: emit(events.ATTEMPT_ENDED if row else 'run.started', ...)",
                                   "4: 'run.started'", "7: 'guardrun.run.finished'"]


def test_names_are_distinct_and_all_holds_every_one():
    constants = {key: value for key, value in vars(events).items()
                 if key.isupper() and key not in ("PREFIX", "ALL")}
    assert set(constants.values()) == events.ALL
    assert len(constants) == len(events.ALL), "two constants spell the same event"
    assert all(re.fullmatch(r"[a-z_]+(\.[a-z_]+)?", name) for name in events.ALL)


@pytest.mark.parametrize("row,name", [
    ({"event": "guardrun.attempt.ended"}, events.ATTEMPT_ENDED),
    ({"event": events.journaled(events.CHECKPOINT_SAVED)}, events.CHECKPOINT_SAVED),
    ({"event": "other.attempt.ended"}, None),   # not guardrun's
    ({"event": 3}, None),
    ({}, None),
])
def test_name_of_an_events_jsonl_object(row, name):
    assert events.name_of(row) == name


#: Dotted names README writes in backquotes that are not events: files, a DeepSpeed key.
README_NOT_EVENTS = re.compile(r"(memory|cgroup)\.\w+|\w+\.(log|json|jsonl|sock|lock)|checkpoint\.load_universal")


def test_every_event_the_readme_names_exists():
    """README has no table of events; each one it names in the text must be one guardrun emits."""
    readme = (ROOT / "README.md").read_text()
    subjects = {name.split(".")[0] for name in events.ALL}
    named = {m.removeprefix(events.PREFIX) for m in re.findall(r"`((?:guardrun\.)?[a-z_]+\.[a-z_]+)`", readme)
             if m.startswith(events.PREFIX) or (m.split(".")[0] in subjects and not README_NOT_EVENTS.fullmatch(m))}
    assert named, "README names no event: the check would pass on anything"
    assert not named - events.ALL, f"README names events guardrun does not emit: {sorted(named - events.ALL)}"
