"""Sizes and durations as users write them in recipes: `90%`, `4GiB`, `12GB`, `30m`, `500ms`.

Binary and decimal units are both accepted, but only when spelled unambiguously:
`12G` could mean 12×2^30 or 12×10^9 (a 7% difference, enough to decide whether a
job is stopped), so it is refused with a message naming both spellings.
Every refusal is a ValueError whose message can be shown to the user as is.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from fractions import Fraction

KIB, MIB, GIB, TIB = (1 << 10), (1 << 20), (1 << 30), (1 << 40)

#: Units spelled exactly as here; anything else is refused.
_SIZE_UNITS = {
    "B": 1,
    "KiB": KIB, "MiB": MIB, "GiB": GIB, "TiB": TIB,
    "KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12,
}
#: Spellings that could be binary or decimal: k, g, gb, Gb, ... (not KB/MB/GB/TB).
_AMBIGUOUS = {"k", "m", "g", "t", "kb", "mb", "gb", "tb"}
_BINARY_BY_LOWER = {name.lower(): name for name in ("KiB", "MiB", "GiB", "TiB")}
_PREFIX_POWER = {"k": 1, "m": 2, "g": 3, "t": 4}

_NUMBER = r"(?P<number>[0-9]*\.?[0-9]+)"
_SIZE_RE = re.compile(rf"^\s*(?P<sign>[-+]?)\s*{_NUMBER}\s*(?P<unit>[A-Za-z]*|%)\s*$")

_SIZE_HELP = "a size like 4GiB, 512MiB or 12GB (binary KiB/MiB/GiB/TiB, decimal KB/MB/GB/TB)"
_PERCENT_HELP = " or a percent of the total like 90%"

_DURATION_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_DURATION_RE = re.compile(rf"^\s*(?P<sign>[-+]?)\s*{_NUMBER}\s*(?P<unit>[A-Za-z]*)\s*$")
_DURATION_HELP = "a duration like 30s, 5m, 2h, 1.5h or 500ms (a bare number is seconds)"


@dataclass(frozen=True)
class Size:
    """A size as written: an absolute number of bytes, or a fraction of some total."""

    text: str
    bytes: int | None = None
    fraction: float | None = None  # 0 < fraction <= 1 when the text was a percent

    def resolve(self, total: int) -> int:
        """Bytes, with a percent taken of `total` (the machine's memory, a GPU's memory)."""
        if self.fraction is not None:
            return int(total * self.fraction)
        assert self.bytes is not None
        return self.bytes

    def describe(self, total: int | None = None) -> str:
        """What the text means, for `guardrun plan` and the console."""
        if self.fraction is not None:
            if total is None:
                return f"{self.text} of the total"
            return f"{self.text} of {format_bytes(total)} ({format_bytes(self.resolve(total))})"
        assert self.bytes is not None
        return f"{self.text} = {self.bytes:,} bytes ({format_bytes(self.bytes)})"


def parse_size(value: object, *, allow_percent: bool = True) -> Size:
    """`90%`, `4GiB`, `1.5GiB`, `12GB`, `500MB` or a whole number of bytes -> Size."""
    accepted = _SIZE_HELP + (_PERCENT_HELP if allow_percent else "")
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        raise ValueError(f"expected {accepted}, got {_shown(value)}")
    text = str(value).strip()
    match = _SIZE_RE.match(text)
    if not match:
        raise ValueError(f"expected {accepted}, got {_shown(value)}")
    number, unit = Fraction(match["number"]), match["unit"]
    if match["sign"] == "-":
        raise ValueError(f"a size cannot be negative, got {_shown(value)}")
    if number == 0:
        raise ValueError(f"a size must be more than zero, got {_shown(value)}")
    if unit == "%":
        return _percent(text, number, allow_percent)
    return Size(text=text, bytes=_bytes(text, number, unit, accepted))


def _percent(text: str, number: Fraction, allow_percent: bool) -> Size:
    if not allow_percent:
        raise ValueError(f"a percent is not allowed here, got {text!r}: write {_SIZE_HELP}")
    if number > 100:
        raise ValueError(f"a percent must be at most 100%, got {text!r}")
    return Size(text=text, fraction=float(number / 100))


def _bytes(text: str, number: Fraction, unit: str, accepted: str) -> int:
    if unit == "":
        if number.denominator != 1:
            raise ValueError(f"a bare number is bytes and must be whole, got {text!r}: "
                             f"add a unit, like {match_number(text)}GiB")
        return int(number)
    if unit not in _SIZE_UNITS:
        raise ValueError(_unit_problem(text, unit, accepted))
    count = round(number * _SIZE_UNITS[unit])
    if count < 1:
        raise ValueError(f"a size must be at least 1 byte, got {text!r}")
    return int(count)


def is_number(text: str) -> bool:
    """Whether `text` reads as a number (`-1`, `0.5`, `1e-4`): a value, not a flag or a word."""
    try:
        float(text)
    except ValueError:
        return False
    return True


def match_number(text: str) -> str:
    """The number part of a size or duration text (for messages)."""
    found = re.search(_NUMBER, text)
    return found["number"] if found else text


def _unit_problem(text: str, unit: str, accepted: str) -> str:
    number = match_number(text)
    lower = unit.lower()
    if lower in _AMBIGUOUS:
        prefix = lower[0].upper()
        power = _PREFIX_POWER[lower[0]]
        return (f"{text!r} is ambiguous: write {number}{prefix}iB (binary, {number}×2^{10 * power}) "
                f"or {number}{prefix}B (decimal, {number}×10^{3 * power})")
    if lower in _BINARY_BY_LOWER:
        return f"unknown unit {unit!r} in {text!r}: did you mean {number}{_BINARY_BY_LOWER[lower]}?"
    return f"unknown unit {unit!r} in {text!r}: expected {accepted}"


def parse_duration(value: object) -> float:
    """`10s`, `5m`, `2h`, `1.5h`, `500ms`, `1d`, or a bare number of seconds -> seconds."""
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise ValueError(f"expected {_DURATION_HELP}, got {_shown(value)}")
    if isinstance(value, (int, float)):
        if value != value or value in (float("inf"), float("-inf")):
            raise ValueError(f"expected {_DURATION_HELP}, got {_shown(value)}")
        if value < 0:
            raise ValueError(f"a duration cannot be negative, got {_shown(value)}")
        return float(value)
    match = _DURATION_RE.match(value)
    if not match or match["unit"] not in ("", *_DURATION_UNITS):
        raise ValueError(f"expected {_DURATION_HELP}, got {_shown(value)}")
    if match["sign"] == "-" and float(match["number"]) != 0:
        raise ValueError(f"a duration cannot be negative, got {_shown(value)}")
    return float(match["number"]) * _DURATION_UNITS.get(match["unit"], 1.0)


def format_bytes(n: int | float) -> str:
    """Human text for a byte count: `1.23 GiB`, `10.0 GiB`, `512 MiB`, `12 KiB`, `100 B`.

    GiB and TiB keep up to two decimals (at least one, so 10 GiB reads `10.0 GiB`);
    MiB and smaller are whole numbers: at that scale the decimals are noise.
    """
    sign = "-" if n < 0 else ""
    n = abs(n)
    for unit, scale in (("TiB", TIB), ("GiB", GIB)):
        if n >= scale:
            text = f"{n / scale:.2f}".rstrip("0")
            return f"{sign}{text}0 {unit}" if text.endswith(".") else f"{sign}{text} {unit}"
    for unit, scale in (("MiB", MIB), ("KiB", KIB)):
        if n >= scale:
            return f"{sign}{round(n / scale)} {unit}"
    return f"{sign}{int(n)} B"


def _shown(value: object) -> str:
    """A value as a message shows it: strings quoted, YAML names for the rest."""
    if value is None:
        return "nothing (null)"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (list, tuple)):
        return "a list"
    if isinstance(value, dict):
        return "a mapping"
    return repr(value)


def format_duration(seconds: float | None) -> str:
    """`0:00:59`, `1d 1:01:01`; `?` for an unknown or negative one (`guardrun status`, reports)."""
    if seconds is None or seconds < 0:
        return "?"
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    days, hours = divmod(hours, 24)
    text = f"{hours}:{minutes:02d}:{secs:02d}"
    return f"{days}d {text}" if days else text


def format_elapsed(seconds: float) -> str:
    """`4:05`, or `1:04:05` past an hour: the live status line's running time."""
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"
