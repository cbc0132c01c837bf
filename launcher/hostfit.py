"""Can the recipe's host limits be met on this machine at all? Said like every recipe error.

A `limits.min_available` at or above the machine's memory is crossed at the first sample
(MemAvailable is always below MemTotal), so every attempt would be stopped as host_oom
until the ladder runs out; a `limits.host_memory` above it can never be reached, which
hides a typo (`400GiB` for `40GiB`). Both are a recipe error (exit 2) naming the key, its
file and line, and the machine's total (issue 13 §7). A percent is of the total already,
so only absolute sizes can be too large.
"""
from __future__ import annotations

from .overrides import problem_at
from .spec import Recipe
from .units import format_bytes


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
    return problem_at(recipe, ("limits", key), message)
