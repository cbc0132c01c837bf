"""Can the recipe's host limits be met on this machine at all? Said like every recipe error.

A `limits.min_available` at or above the machine's memory is crossed at the first sample
(MemAvailable is always below MemTotal), so every attempt would be stopped as host_oom
until the ladder runs out; a `limits.host_memory` above it can never be reached, which
hides a typo (`400GiB` for `40GiB`). Both are a recipe error (exit 2) naming the key, its
file and line, and the machine's total (issue 13 §7). A percent is of the total already,
so only absolute sizes can be too large.
"""
from __future__ import annotations

from .recipe import Recipe
from .units import format_bytes
from .yamlnodes import Ctx, RecipeError, compose, line_of, pairs


def limits_problem(recipe: Recipe, total: int) -> str:
    """`file:line: limits.KEY: ...` when a host limit cannot be met with `total` bytes, else ''."""
    limits = recipe.limits
    machine = f"this machine has {format_bytes(total)} of memory (MemTotal)"
    if limits.min_available is not None and limits.min_available.resolve(total) >= total:
        return _error(recipe, "min_available", f"{limits.min_available.text} is not below the "
                      f"machine's memory: {machine}, and MemAvailable is always less, so every "
                      f"attempt would be stopped at once; give a smaller size or a percent like 10%")
    if limits.host_memory is not None and limits.host_memory.resolve(total) > total:
        return _error(recipe, "host_memory", f"{limits.host_memory.text} is more than the machine's "
                      f"memory: {machine}, so the limit can never be reached; give a smaller size "
                      f"or a percent like 90%")
    return ""


def _error(recipe: Recipe, key: str, message: str) -> str:
    return str(RecipeError(recipe.path, _line(recipe, "limits", key), f"limits.{key}", message))


def _line(recipe: Recipe, section: str, key: str) -> int:
    """The line of `section.key`'s value in the recipe file; 1 if it cannot be found."""
    try:
        root, loader = compose(recipe.path)
        ctx = Ctx(file=recipe.path, loader=loader, workdir=recipe.workdir)
        for name, _key_node, value_node in pairs(root, "", ctx):
            if name != section:
                continue
            for inner, _inner_key, inner_value in pairs(value_node, section, ctx):
                if inner == key:
                    return line_of(inner_value)
    except RecipeError:
        pass  # the file changed since it was loaded
    return 1
