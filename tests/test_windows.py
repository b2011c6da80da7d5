import pytest

from lowprec.data.windows import format_windows, parse_windows
from lowprec.errors import InputError

AVAILABLE = list(range(10))


@pytest.mark.parametrize("spec,expected", [
    ("3", [3]), ("0-4", [0, 1, 2, 3, 4]), ("5,7,9", [5, 7, 9]), ("all", AVAILABLE),
    ("0-2,5", [0, 1, 2, 5]), (" 7 , 1 ", [1, 7]), (4, [4]),
])
def test_parse(spec, expected):
    assert parse_windows(spec, AVAILABLE) == expected


@pytest.mark.parametrize("spec", ["x", "4-2", "1-", "", "1,,x"])
def test_bad_spec(spec):
    with pytest.raises(InputError, match="window SPEC|selects no window"):
        parse_windows(spec, AVAILABLE)


def test_missing_window_named():
    with pytest.raises(InputError, match=r"\[12\]"):
        parse_windows("8-12", list(range(12)))


def test_format_roundtrip():
    assert format_windows([0, 1, 2, 5, 7, 8]) == "0-2,5,7-8"
    assert parse_windows(format_windows([0, 1, 2, 5, 7, 8]), AVAILABLE) == [0, 1, 2, 5, 7, 8]
