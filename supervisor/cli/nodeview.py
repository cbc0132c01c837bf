"""`guardrun status` for a multi-node job (issue 16): every node's part, from the shared folder.

Each node's guardrun keeps its own state dir; what one node knows of the others is what
they wrote into `nodes.shared_dir` (run.nodes): per attempt, `stop-R.json` when node R
stopped its part, `node-R.json` when its part ended, `lost-R.json` when it gave the
attempt up. `lines` decides what that reads as (pure); `status_lines` finds the files.
"""
from __future__ import annotations

from typing import Any, Mapping

from guardrun.launcher.recipe import RecipeError, load_recipe

from ..record.shared import SharedDir, SharedDirError

STEMS = ("node", "stop", "lost")
#: One node's files of an attempt, by stem (None: not there or unreadable).
Files = Mapping[str, "Mapping[str, Any] | None"]


def part(files: Files) -> str:
    """How one node's part of the attempt stands, from its files."""
    lost, ended, stop = files.get("lost"), files.get("node"), files.get("stop")
    if lost is not None:
        return f"gave the attempt up: {lost.get('why', '?')}"
    if ended is not None:
        evidence = f" ({ended['evidence']})" if ended.get("evidence") else ""
        where = ", ".join(f"{k} {ended[k]}" for k in ("host", "pid", "step") if ended.get(k) is not None)
        return f"ended {ended.get('kind', '?')}{evidence}" + (f" [{where}]" if where else "")
    if stop is not None:
        return f"stopping its part ({stop.get('kind', '?')}: {stop.get('evidence', '')})"
    return "running (nothing written yet)"


def lines(attempt: int | None, count: int, rank: int, shared_dir: str,
          by_rank: Mapping[int, Files]) -> list[str]:
    """The lines `guardrun status` adds for a job of `count` nodes, seen from node `rank`."""
    head = f"  nodes: {count}, this is node {rank}; shared_dir {shared_dir}"
    if attempt is None:
        return [head, "  no attempt in the shared folder yet"]
    return [head, f"  job attempt {attempt}:"] + [
        f"    node {r}: {part(by_rank.get(r, {}))}" for r in range(count)]


def read(shared: SharedDir, attempt: int) -> dict[int, dict[str, Any]]:
    """Each node's files of `attempt` (unreadable ones left out)."""
    found: dict[int, dict[str, Any]] = {}
    for stem in STEMS:
        for rank in shared.ranks(attempt, stem):
            try:
                found.setdefault(rank, {})[stem] = shared.read(attempt, stem, rank)
            except SharedDirError:
                continue
    return found


def status_lines(recipe_path: Any) -> list[str]:
    """The nodes' lines for the job run from `recipe_path` (state.json's `recipe`); none for a
    one-machine job or a recipe that cannot be read now (status still shows the rest)."""
    if not isinstance(recipe_path, str):
        return []
    try:
        recipe = load_recipe(recipe_path, missing_ok=True)
    except (RecipeError, OSError):
        return []
    node = recipe.node
    if not node.multi or node.shared_dir is None:
        return []
    shared = SharedDir(node.shared_dir, recipe.name, node.count, node.rank)
    attempts = shared.attempts()
    attempt = attempts[-1] if attempts else None
    return lines(attempt, node.count, node.rank, str(node.shared_dir),
                 read(shared, attempt) if attempt is not None else {})
