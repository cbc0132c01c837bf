"""The live status line, fitted to the terminal's width.

The line is built from named fields (`StatusLine`), shown in the order given and joined
with " · ". When it is wider than the terminal, `fit` first shortens the fields that have
a shorter form (8 GPUs become `gpu 8× 61–79/80 GiB`), then drops whole fields, least
important first (DROP_ORDER), and crops what is left as a last resort: a redraw never
wraps, so `\\r` and erasing below always reach all of it (README, "The status line").
Widths are counted in characters (every field is ASCII but `·`, `×`, `–`, one column each).
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Iterable, Sequence

SEP = " · "
#: The fields a line too wide for the terminal loses, least important first. A field not
#: named here (a plain message: "waiting for 2 free GPU(s)...") is only ever cropped.
DROP_ORDER = ("ranks", "rung", "avail", "elapsed", "ckpt", "loss", "gpu", "mem", "step", "attempt")
_GIB = 1 << 30


@dataclass(frozen=True)
class Field:
    name: str
    text: str
    short: str = ""  # a shorter form, taken before any field is dropped ('' : none)


class StatusLine(str):
    """The whole line as text (what a log, journald and systemd's STATUS= get), with
    its fields for fitting it to a terminal."""

    fields: tuple[Field, ...]

    def __new__(cls, fields: Iterable[Field]) -> "StatusLine":
        kept = tuple(f for f in fields if f.text)
        line = super().__new__(cls, SEP.join(f.text for f in kept))
        line.fields = kept
        return line


def fit(line: str, width: int) -> str:
    """`line` in at most `width` characters: shortened, then fields dropped (DROP_ORDER),
    then cropped with '…'. A plain str is one field, cropped only."""
    fields = list(getattr(line, "fields", None) or (Field("text", str(line)),))
    if len(_joined(fields)) <= width:
        return _joined(fields)
    fields = [replace(f, text=f.short) if f.short else f for f in fields]
    for name in DROP_ORDER:
        if len(_joined(fields)) <= width:
            break
        fields = [f for f in fields if f.name != name] or fields[:1]
    text = _joined(fields)
    if len(text) <= width:
        return text
    return text[:width - 1] + "…" if width > 0 else ""


def gpu_summary(readings: Sequence) -> str:
    """`gpu 8× 61–79/80 GiB`: several GPUs' used memory as one range (readings: `.used`,
    `.total` in bytes); '' for fewer than two."""
    if len(readings) < 2:
        return ""
    return (f"gpu {len(readings)}× {_span([r.used for r in readings])}"
            f"/{_span([r.total for r in readings])} GiB")


def _span(values: Sequence[int]) -> str:
    low, high = round(min(values) / _GIB), round(max(values) / _GIB)
    return f"{low}" if low == high else f"{low}–{high}"


def _joined(fields: Sequence[Field]) -> str:
    return SEP.join(f.text for f in fields)
