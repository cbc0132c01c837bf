"""`key=value` arguments: LLaMA-Factory's command-line overrides and mmengine's `--cfg-options`.

`llamafactory-cli train cfg.yaml learning_rate=1e-5 logging_steps=1` (LLaMA-Factory's
examples/README.md, "Advanced usage") and
`xtuner train CONFIG --cfg-options train_dataloader.batch_size=4` (mmengine's
DictAction) both read `key=value` tokens. With `args_style: key=value` a recipe's
mapping args render that way; keys that start with `-` stay flags (`--deepspeed
deepspeed_zero3`), so one recipe can mix both.

The batch, accumulation and learning rate of such tools live in their own config file,
so guardrun passes them only when a rung changed them: the first rung is the tool's
command as its project documents it.
"""
from __future__ import annotations

from typing import Iterable, Sequence

KV = "key=value"


def is_flag_key(key: str) -> bool:
    return key.startswith("-")


def render_kv(value: object) -> str:
    """One value as mmengine's DictAction and OmegaConf's CLI parser read it."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "True" if value else "False"
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(render_kv(item) for item in value) + "]"
    if isinstance(value, float):
        text = repr(value)
        return text[:-2] if text.endswith(".0") else text
    return str(value)


def render(args: Iterable[tuple[str, object]], render_flag) -> list[str]:
    """Mapping args in key=value style; `render_flag(key, value)` renders the flag ones."""
    tokens: list[str] = []
    for key, value in args:
        tokens += render_flag(key, value) if is_flag_key(key) else [f"{key}={render_kv(value)}"]
    return tokens


def set_kv(tokens: Sequence[str], key: str, value: object, group: str | None = None) -> list[str]:
    """`tokens` with `key=...` replaced in place, or added after the last key=value token.

    With `group` (`--cfg-options`) a new token goes after the group's tokens, and the
    group flag is added first if it is not there yet.
    """
    token = f"{key}={render_kv(value)}"
    out = list(tokens)
    for index, each in enumerate(out):
        if _kv_key(each) == key:
            out[index] = token
            return out
    start = out.index(group) + 1 if group and group in out else None
    if group and start is None:
        return out + [group, token]
    last = None
    for index in range(start or 0, len(out)):
        if _kv_key(out[index]) is not None:
            last = index
        elif start is not None and out[index].startswith("-"):
            break
    if last is None:
        at = start if start is not None else len(out)
    else:
        at = last + 1
    return out[:at] + [token] + out[at:]


def only_changed(overrides: Sequence[tuple[str, object]],
                 as_written: dict[str, object]) -> list[tuple[str, object]]:
    """`overrides` without those whose value is the recipe's own (the tool's config has it)."""
    return [(key, value) for key, value in overrides
            if key not in as_written or str(as_written[key]) != str(value)]


def _kv_key(token: str) -> str | None:
    if token.startswith("-") or "=" not in token:
        return None
    key = token.split("=", 1)[0]
    return key if key and " " not in key else None
