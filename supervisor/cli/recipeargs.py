"""The words of `run`, `plan`, `start` and `tmux`: one RECIPE and KEY=VALUE overrides, in any order.

`guardrun run r.yaml batch.per_device=8 limits.host_memory=80% gpus=4`: a word is an override
when it reads KEY=VALUE and is not an existing file (launcher/overrides.py); the one other
word is the recipe. A bad recipe or override is one `guardrun: error:` line and exit 2.
"""
from __future__ import annotations

import os
from typing import Sequence

import click
from guardrun.launcher.overrides import is_override, located
from guardrun.launcher.recipe import RecipeError, load_recipe
from guardrun.launcher.spec import Recipe

from ..core.exits import USAGE, fail


class _Words(click.Argument):
    def get_error_hint(self, ctx) -> str:
        return "'RECIPE'"  # `Missing argument 'RECIPE'`, not the whole metavar


#: The decorator for a command's RECIPE [KEY=VALUE]... words (a path: the shell completes files).
words_argument = click.argument("words", cls=_Words, nargs=-1, required=True,
                                metavar="RECIPE [KEY=VALUE]...", type=click.Path(dir_okay=False))


def split(words: Sequence[str]) -> tuple[str, tuple[str, ...]]:
    """(recipe, overrides) of a command's words; not exactly one recipe is a usage error."""
    recipes = [word for word in words if _is_recipe(word)]
    overrides = tuple(word for word in words if not _is_recipe(word))
    if not recipes:
        raise click.UsageError("no recipe given, only overrides (KEY=VALUE): " + " ".join(overrides))
    if len(recipes) > 1:
        raise click.UsageError(f"one recipe, then KEY=VALUE overrides; got {len(recipes)} words that are "
                               "not KEY=VALUE: " + " ".join(recipes))
    return recipes[0], overrides


def _is_recipe(word: str) -> bool:
    return os.path.isfile(word) or not is_override(word)


def error_text(err: RecipeError) -> str:
    """The recipe error as said: `r.yaml:3: key: ...` or `<command line>: key: ...`."""
    return str(located(err))


def load(words: Sequence[str], *, missing_ok: bool = False) -> Recipe:
    """The recipe of a command's words with its overrides, or exit 2 saying why."""
    path, overrides = split(words)
    try:
        return load_recipe(path, missing_ok=missing_ok, overrides=overrides)
    except RecipeError as err:
        raise fail(error_text(err), USAGE) from None
