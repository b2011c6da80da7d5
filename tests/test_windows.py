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


def _meta(rows):
    from lowprec.data.dataset import DatasetMeta, SparseFeature, WindowInfo

    return DatasetMeta(("d",), (SparseFeature("s", 4),), tuple(WindowInfo(i, r, f"w{i}") for i, r in enumerate(rows)))


def test_windows_without_rows_are_refused_alone_and_skipped_beside_others():
    """Every command resolves --windows here: an empty window used to crash eval/compare/drift
    (reshape of size 0) and train an untrained model."""
    from lowprec.data.windows import select_windows
    from lowprec.errors import InputWarning

    meta = _meta([10, 0, 5, 0])
    with pytest.raises(InputError, match=r"^--windows: window\(s\) 1 \('w1'\), 3 \('w3'\) hold no rows"):
        select_windows("1,3", meta)
    with pytest.raises(InputError, match=r"^eval windows: window\(s\) 1 \('w1'\) hold no rows"):
        select_windows("label:w1", meta, "eval windows")
    with pytest.warns(InputWarning, match=r"--windows: skipping window\(s\) 1 \('w1'\): they hold no rows"):
        assert select_windows("0-2", meta) == [0, 2]
    with pytest.warns(InputWarning, match=r"1 \('w1'\), 3 \('w3'\)"):
        assert select_windows("all", meta) == [0, 2]
