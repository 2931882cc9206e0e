"""Sizes: parse_size / format_size, table-driven, plus a hypothesis round trip. Binary units throughout."""

import pytest
from hypothesis import given
from hypothesis import strategies as st

from vramfit.units import SizeError, format_size, parse_size

K, M, G, T = 2**10, 2**20, 2**30, 2**40


@pytest.mark.parametrize("text, expected", [
    ("8G", 8 * G), ("8GB", 8 * G), ("8GiB", 8 * G), ("8gib", 8 * G), ("8g", 8 * G), ("8 G", 8 * G),
    ("  8G  ", 8 * G), ("7.5G", int(7.5 * G)), (".5G", G // 2), ("8.G", 8 * G), ("8000M", 8000 * M),
    ("8192MiB", 8 * G), ("512mb", 512 * M), ("4K", 4 * K), ("4KiB", 4 * K), ("4kb", 4 * K), ("1T", T),
    ("1.5TiB", int(1.5 * T)), ("100", 100), ("100B", 100), ("100 b", 100), ("0", 0), ("0G", 0),
    ("1.5K", 1536), ("0.6", 1), ("2.5", 2), ("1.0009K", 1025),  # rounded to the byte, not truncated
    (123, 123), (1.9, 1), (0, 0), (2**45, 2**45),                     # numbers are bytes already
])
def test_parse_size_accepts(text, expected):
    assert parse_size(text) == expected


@pytest.mark.parametrize("text", [
    "iB", "8iB", "8 iB", "8X", "8GG", "G", "", "   ", "-1G", "-1", "8 G B", "1e9", "8,5G", "0x10", "G8", "8.5.1G",
    "8PiB", "8Gi", "8iG",
])
def test_parse_size_rejects_text(text):
    with pytest.raises(SizeError, match=r"cannot parse size .*\(examples: 8G, 7\.5GiB, 8000M, 512MiB\)"):
        parse_size(text)


@pytest.mark.parametrize("value", [-1, -0.5, -(2**40)])
def test_parse_size_rejects_negative_numbers(value):
    with pytest.raises(SizeError, match=f"size must be >= 0, got {value}"):
        parse_size(value)


@pytest.mark.parametrize("value", [True, False])
def test_parse_size_rejects_booleans(value):
    with pytest.raises(SizeError, match=f"not a size: {value!r}"):
        parse_size(value)


def test_size_error_is_a_value_error():
    assert issubclass(SizeError, ValueError)


@pytest.mark.parametrize("n, precision, expected", [
    (0, 2, "0 B"), (1, 2, "1 B"), (1023, 2, "1023 B"), (1023.6, 2, "1024 B"), (1024, 2, "1.00 KiB"),
    (1536, 2, "1.50 KiB"), (M - 1, 2, "1024.00 KiB"), (M, 2, "1.00 MiB"), (8 * G, 2, "8.00 GiB"),
    (int(7.25 * G), 1, "7.2 GiB"), (int(1.5 * G), 0, "2 GiB"), (T, 2, "1.00 TiB"), (2048 * T, 3, "2048.000 TiB"),
    (-2048, 2, "-2.00 KiB"), (-5, 2, "-5 B"), (-(3 * G), 1, "-3.0 GiB"), (G - 1, 2, "1024.00 MiB"),
])
def test_format_size_table(n, precision, expected):
    assert format_size(n, precision) == expected


def test_format_size_default_precision_is_two():
    assert format_size(3 * M) == "3.00 MiB"


@given(st.integers(min_value=0, max_value=2**50), st.integers(min_value=0, max_value=4))
def test_format_then_parse_round_trips_within_the_printed_precision(n, precision):
    text = format_size(n, precision).replace(" ", "")
    scale = next((s for s in (T, G, M, K) if n >= s), 1)
    tolerance = 0.5 * 10**-precision * scale + 0.5 if scale > 1 else 0
    assert abs(parse_size(text) - n) <= tolerance


@given(st.integers(min_value=0, max_value=10**6), st.sampled_from(["", "B", "K", "KB", "KiB", "M", "MB", "MiB",
                                                                     "G", "GB", "GiB", "T", "TB", "TiB"]),
       st.booleans(), st.booleans())
def test_integer_sizes_parse_exactly_in_any_spelling(value, unit, lower, space):
    scale = {"": 1, "B": 1, "K": K, "M": M, "G": G, "T": T}[unit[:1]]
    text = f"{value}{' ' if space else ''}{unit.lower() if lower else unit}"
    assert parse_size(text) == value * scale


def test_the_size_limit_is_2_to_the_60_inclusive_and_its_error_quotes_the_text():
    """parse_size refuses what is beyond 2**60 bytes (MAX_SIZE) or not finite, as a number or as text, with one
    message that quotes the first 40 characters of what was given; 2**60 itself is a size."""
    from vramfit.units import MAX_SIZE, SizeLimitError

    assert MAX_SIZE == 2**60
    assert parse_size(2**60) == 2**60 and parse_size("1048576T") == 2**60  # the limit itself: accepted
    for value in (2**60 + 1, float("inf"), float("nan")):
        with pytest.raises(SizeLimitError, match=r"^size .* is beyond the limit of 2\*\*60 bytes \(1 EiB\)$"):
            parse_size(value)
    with pytest.raises(SizeLimitError) as big:
        parse_size(2**61)
    assert str(big.value) == f"size {str(2**61)!r} is beyond the limit of 2**60 bytes (1 EiB)"
    text = "9" * 50 + "T"
    with pytest.raises(SizeLimitError) as long:
        parse_size(text)
    assert str(long.value) == f"size {text[:40]!r} is beyond the limit of 2**60 bytes (1 EiB)"
    assert issubclass(SizeLimitError, SizeError)
