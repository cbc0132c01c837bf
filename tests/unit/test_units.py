"""Sizes and durations as users write them; every refusal says what would be accepted."""
from __future__ import annotations

import pytest
from hypothesis import given, strategies as st

from guardrun.launcher.units import Size, format_bytes, parse_duration, parse_size

GIB, MIB = 1 << 30, 1 << 20


@pytest.mark.parametrize("text,expected", [
    ("4GiB", 4 * GIB),
    ("4 GiB", 4 * GIB),
    ("512MiB", 512 * MIB),
    ("1.5GiB", 3 * GIB // 2),
    ("12GB", 12 * 10**9),
    ("500MB", 500 * 10**6),
    ("64KiB", 64 * 1024),
    ("64KB", 64_000),
    ("2TiB", 2 << 40),
    ("2TB", 2 * 10**12),
    ("100B", 100),
    (4294967296, 4 * GIB),
    ("4294967296", 4 * GIB),
    (1, 1),
    ("  8GiB ", 8 * GIB),
])
def test_good_absolute_sizes(text, expected):
    size = parse_size(text)
    assert size.bytes == expected and size.fraction is None
    assert size.resolve(total=123) == expected


@pytest.mark.parametrize("text,fraction", [("90%", 0.9), ("90 %", 0.9), ("100%", 1.0), ("12.5%", 0.125)])
def test_good_percents(text, fraction):
    size = parse_size(text)
    assert size.bytes is None and size.fraction == pytest.approx(fraction)
    assert size.resolve(1000) == int(1000 * fraction)


@pytest.mark.parametrize("value,fragment", [
    ("12G", "'12G' is ambiguous: write 12GiB (binary, 12×2^30) or 12GB (decimal, 12×10^9)"),
    ("12g", "'12g' is ambiguous: write 12GiB"),
    ("12gb", "'12gb' is ambiguous: write 12GiB (binary, 12×2^30) or 12GB"),
    ("512M", "write 512MiB (binary, 512×2^20) or 512MB (decimal, 512×10^6)"),
    ("4gib", "did you mean 4GiB?"),
    ("4 parsecs", "unknown unit 'parsecs'"),
    ("-4GiB", "cannot be negative"),
    (-4, "cannot be negative"),
    ("0GiB", "more than zero"),
    (0, "more than zero"),
    ("0%", "more than zero"),
    ("150%", "at most 100%"),
    ("lots", "expected a size like 4GiB, 512MiB or 12GB"),
    ("lots", "or a percent of the total like 90%"),
    ("", "expected a size like"),
    (True, "got true"),
    (None, "got nothing (null)"),
    (1.5, "got 1.5"),
    ([1], "got a list"),
    ("1.5", "a bare number is bytes and must be whole"),
])
def test_bad_sizes_say_what_is_accepted(value, fragment):
    with pytest.raises(ValueError) as err:
        parse_size(value)
    assert fragment in str(err.value)


def test_percent_refused_where_not_allowed():
    with pytest.raises(ValueError, match="a percent is not allowed here.*4GiB"):
        parse_size("90%", allow_percent=False)
    with pytest.raises(ValueError) as err:
        parse_size("lots", allow_percent=False)
    assert "percent" not in str(err.value)


def test_describe():
    assert parse_size("12GB").describe() == "12GB = 12,000,000,000 bytes (11.18 GiB)"
    assert parse_size("4GiB").describe() == "4GiB = 4,294,967,296 bytes (4.0 GiB)"
    total = int(23.4 * GIB)
    assert parse_size("90%").describe(total).startswith("90% of 23.4 GiB (21.06 GiB)")
    assert parse_size("90%").describe() == "90% of the total"


@pytest.mark.parametrize("n,text", [
    (0, "0 B"), (100, "100 B"), (2048, "2 KiB"), (512 * MIB, "512 MiB"), (GIB, "1.0 GiB"),
    (10 * GIB, "10.0 GiB"), (int(1.234 * GIB), "1.23 GiB"), (int(23.4 * GIB), "23.4 GiB"),
    (3 << 40, "3.0 TiB"), (-GIB, "-1.0 GiB"),
])
def test_format_bytes(n, text):
    assert format_bytes(n) == text


@pytest.mark.parametrize("value,seconds", [
    ("10s", 10.0), ("5m", 300.0), ("30m", 1800.0), ("2h", 7200.0), ("1.5h", 5400.0),
    ("500ms", 0.5), ("1d", 86400.0), (30, 30.0), (0.25, 0.25), ("45", 45.0), ("0.1s", 0.1),
    (" 10 s ", 10.0), (0, 0.0),
])
def test_good_durations(value, seconds):
    assert parse_duration(value) == pytest.approx(seconds)


@pytest.mark.parametrize("value,fragment", [
    ("-5s", "cannot be negative"),
    (-1, "cannot be negative"),
    ("soon", "expected a duration like 30s, 5m, 2h, 1.5h or 500ms"),
    ("5 minutes", "expected a duration like"),
    ("5min", "got '5min'"),
    (True, "got true"),
    (None, "got nothing (null)"),
    (float("nan"), "expected a duration"),
    ([1, 2], "got a list"),
])
def test_bad_durations(value, fragment):
    with pytest.raises(ValueError) as err:
        parse_duration(value)
    assert fragment in str(err.value)


@given(st.integers(min_value=1, max_value=10**7))
def test_mib_round_trip(n):
    assert parse_size(f"{n}MiB").bytes == n * 2**20
    assert parse_size(f"{n} GiB").resolve(0) == n * 2**30


@given(st.integers(min_value=1, max_value=100))
def test_percent_round_trip(p):
    assert parse_size(f"{p}%") == Size(text=f"{p}%", fraction=p / 100)
