"""The house's one-way rule, read from the source (an AST walk, every import, lazy ones too):

    core < record < watch | diagnose < run < unattended | report < cli

A module imports only from its own layer or lower ones; the two pairs on one level
(watch and diagnose, unattended and report) do not import each other; launcher/ never
imports supervisor/; and no module reaches itself through its imports (no cycle).
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
RANK = {"core": 0, "record": 1, "watch": 2, "diagnose": 2, "run": 3,
        "unattended": 4, "report": 4, "cli": 5}


def modules() -> dict[str, Path]:
    """'supervisor.run.loop' / 'launcher.recipe' -> file, for every module of both packages."""
    found = {}
    for package in ("launcher", "supervisor"):
        for path in sorted((ROOT / package).rglob("*.py")):
            parts = path.relative_to(ROOT).with_suffix("").parts
            if parts[-1] == "__init__":
                parts = parts[:-1]
            found[".".join(parts)] = path
    return found


def imports(name: str, path: Path, known: dict[str, Path]) -> set[str]:
    """The package modules `name` imports, as keys of `known`."""
    package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[:len(package) - node.level + 1]
                stem = ".".join(base + ([node.module] if node.module else []))
            else:
                stem = node.module or ""
            targets = [f"{stem}.{alias.name}" for alias in node.names] + [stem]
        else:
            continue
        for target in targets:
            target = target.removeprefix("guardrun.")
            if target in known:
                found.add(target)
    return found - {name}


GRAPH = {name: imports(name, path, modules()) for name, path in modules().items()}


def layer(name: str) -> str | None:
    parts = name.split(".")
    return parts[1] if parts[0] == "supervisor" and len(parts) > 1 else None


def test_every_supervisor_module_is_in_a_layer():
    loose = [n for n in GRAPH if n.startswith("supervisor.") and layer(n) not in RANK
             and n not in ("supervisor", "supervisor.__main__")]
    assert not loose, f"modules outside the layers {sorted(RANK)}: {loose}"


def test_no_import_goes_up_or_across_a_layer():
    wrong = []
    for name, targets in GRAPH.items():
        own = layer(name)
        if own not in RANK:
            continue
        for target in targets:
            other = layer(target)
            if other not in RANK or other == own:
                continue
            if RANK[other] >= RANK[own]:
                wrong.append(f"{name} ({own}) imports {target} ({other})")
    assert not wrong, "\n".join(wrong)


def test_launcher_never_imports_supervisor():
    wrong = [f"{name} imports {target}" for name, targets in GRAPH.items()
             if name.startswith("launcher") for target in targets if target.startswith("supervisor")]
    assert not wrong, "\n".join(wrong)


def cycle_through(start: str) -> list[str] | None:
    """A shortest import path from `start` back to itself, or None."""
    paths = [[start]]
    seen = {start}
    while paths:
        nxt = []
        for path in paths:
            for target in sorted(GRAPH[path[-1]]):
                if target == start:
                    return path + [start]
                if target not in seen:
                    seen.add(target)
                    nxt.append(path + [target])
        paths = nxt
    return None


@pytest.mark.parametrize("package", ["launcher", "supervisor"])
def test_no_import_cycle(package):
    cycles = {" -> ".join(c) for n in GRAPH if n.startswith(package) if (c := cycle_through(n))}
    assert not cycles, "\n".join(sorted(cycles))


def test_the_rule_catches_an_upward_import(tmp_path):
    """The walk itself: a core module importing the loop is seen as going up."""
    fake = tmp_path / "clock.py"
    fake.write_text("from ..run.loop import Supervisor\n")
    assert "supervisor.run.loop" in imports("supervisor.core.clock", fake, modules())
