"""What a rung really changes: the launch it renders, compared with another rung's.

Two plans can differ as values and still run the same job: `batch: halve` at micro-batch
1, `dataloader_workers: 0` where the job already runs 0 workers, fewer ranks for a
`launcher: command` tool that is told no rank count (issue 13 §2, §6). What runs is the
argv, the environment guardrun sets and the derived files, so those are compared:
`fingerprint` is what the ladder uses to skip a rung that would relaunch a configuration
that already failed, `changes` is what `guardrun plan` prints for each rung.

Pure, like command.build (which reads the recipe's DeepSpeed config file).
"""
from __future__ import annotations

import dataclasses
import json
from typing import NamedTuple

from . import dsconfig
from .command import build, is_flag
from .plan import Plan
from .spec import Recipe

#: Set per attempt and per rung, not part of the job's configuration.
_BOOKKEEPING = frozenset({"GUARDRUN_ATTEMPT", "GUARDRUN_RUNG"})


class Launch(NamedTuple):
    """A plan's launch without what changes per attempt (attempt number, rung number)."""

    argv: tuple[str, ...]
    env: tuple[tuple[str, str], ...]
    deepspeed: str  # the DeepSpeed config the job reads, as sorted JSON ("" without one)


def fingerprint(recipe: Recipe, plan: Plan) -> Launch:
    """The launch `plan` renders (no resume, no attempt folder, no port): equal for equal jobs.

    A DeepSpeed config missing here (`guardrun plan` of a recipe for another machine) is
    stood in for by the changes the plan makes to it.
    """
    try:
        spec = build(recipe, plan)
        config = _config_of(recipe, spec)
    except (OSError, dsconfig.DeepSpeedConfigError):
        spec = build(dataclasses.replace(recipe, deepspeed=None), plan)
        config = dsconfig.derive({}, plan)
    env = tuple((key, value) for key, value in spec.env if key not in _BOOKKEEPING)
    text = json.dumps(config, sort_keys=True) if config is not None else ""
    return Launch(spec.argv, env, text)


def _config_of(recipe: Recipe, spec) -> dict | None:
    if recipe.deepspeed is None:
        return None
    for _path, text in spec.files:
        return json.loads(text)
    return dsconfig.load(recipe.deepspeed.config)


def changes(before: Launch, after: Launch) -> list[str]:
    """What differs from `before` to `after`, one short item each: `--flag 4→2`,
    `+--flag 0`, `-NAME`, `env NAME 2→1`, `deepspeed zero_optimization.stage 2→3`."""
    return (_argv_changes(before.argv, after.argv) + _env_changes(dict(before.env), dict(after.env))
            + _config_changes(before.deepspeed, after.deepspeed))


def _argv_changes(old: tuple[str, ...], new: tuple[str, ...]) -> list[str]:
    before, after = _items(old), _items(new)
    out = []
    for key, value in after.items():
        if key not in before:
            out.append(f"+{_show(key, value)}")
        elif before[key] != value:
            out.append(f"{key}{'=' if key in _kv_keys(new) else ' '}{before[key]}→{value}".lstrip())
    return out + [f"-{_show(key, value)}" for key, value in before.items() if key not in after]


def _items(argv: tuple[str, ...]) -> dict[str, str]:
    """argv as {flag or key=: its value(s)}: `--k v`, `--k=v`, `k=v`; words before any flag
    (the launcher, the script) under ""; a repeated key gets `#2`, `#3`."""
    items: dict[str, str] = {}
    key, values = "", []

    def close():
        name, count = key, 2
        while name in items:
            name, count = f"{key}#{count}", count + 1
        items[name] = " ".join(values)

    for token in argv:
        flag = is_flag(token)
        if flag or ("=" in token and not token.startswith("-")):
            close()
            key, _, rest = token.partition("=")
            values = [rest] if rest or "=" in token else []
        else:
            values.append(token)
    close()
    return items


def _kv_keys(argv: tuple[str, ...]) -> set[str]:
    return {token.partition("=")[0] for token in argv if "=" in token and not token.startswith("-")}


def _show(key: str, value: str) -> str:
    return f"{key}={value}" if not key.startswith("-") and key else f"{key} {value}".strip()


def _env_changes(old: dict[str, str], new: dict[str, str]) -> list[str]:
    out = [f"env {key} {old[key]}→{new[key]}" for key in new if key in old and old[key] != new[key]]
    out += [f"env +{key}={new[key]}" for key in new if key not in old]
    return out + [f"env -{key}" for key in old if key not in new]


def _config_changes(old: str, new: str) -> list[str]:
    if old == new:
        return []
    before, after = _flat(json.loads(old) if old else {}), _flat(json.loads(new) if new else {})
    out = []
    for key in sorted(set(before) | set(after)):
        if key not in before:
            out.append(f"deepspeed +{key}={after[key]}")
        elif key not in after:
            out.append(f"deepspeed -{key}")
        elif before[key] != after[key]:
            out.append(f"deepspeed {key} {before[key]}→{after[key]}")
    return out


def _flat(value: object, prefix: str = "") -> dict[str, str]:
    if isinstance(value, dict):
        out: dict[str, str] = {}
        for key, item in value.items():
            out.update(_flat(item, f"{prefix}{key}."))
        return out
    return {prefix.rstrip("."): json.dumps(value)}
