"""Window SPEC errors say what the dataset holds."""

from types import SimpleNamespace

import pytest

from lowprec.data.windows import select_windows
from lowprec.errors import InputError


def test_a_label_matching_nothing_lists_the_labels_with_an_ellipsis_where_it_cuts():
    """The list was cut at 20 labels without saying so: 2016-2018 of 23 yearly windows looked missing."""
    years = [str(y) for y in range(1996, 2019)]
    meta = SimpleNamespace(windows=[SimpleNamespace(index=i, label=y) for i, y in enumerate(years)])
    with pytest.raises(InputError) as err:
        select_windows("label:1990", meta, "--windows")
    assert str(err.value) == ("--windows: 'label:1990' matches no window label (the 23 labels: 1996, 1997, 1998, "
                              "1999, 2000, 2001, 2002, 2003, 2004, 2005, ..., 2014, 2015, 2016, 2017, 2018)")
    few = SimpleNamespace(windows=meta.windows[:3])
    with pytest.raises(InputError, match=r"\(the 3 labels: 1996, 1997, 1998\)$"):
        select_windows("label:1990", few, "--windows")


def _days(*labels):
    return SimpleNamespace(windows=[SimpleNamespace(index=i, label=d, rows=5) for i, d in enumerate(labels)],
                           window=lambda i: SimpleNamespace(rows=5, label=labels[i]))


DAYS = _days("2024-01-01", "2024-01-02", "2024-01-03", "2024-01-04")


@pytest.mark.parametrize("spec,expected", [
    ("label:2024-01-02..", [1, 2, 3]),  # from A on (was read as label:2024-01-02 alone)
    ("label:..2024-01-02", [0, 1]),
    ("label:2024-01-01..2024-01-02,label:2024-01-04", [0, 1, 3]),  # a second `label:` (was dropped)
    ("label:2024-01-01, 2024-01-03", [0, 2]),
])
def test_label_specs_select_open_ranges_and_repeated_prefixes(spec, expected):
    assert select_windows(spec, DAYS) == expected


def test_every_part_of_a_label_spec_must_match_a_window():
    """One part matching nothing was skipped without a word while another part matched, so a drift
    job given two days silently scored one; numeric SPECs refuse a missing window."""
    with pytest.raises(InputError, match=r"^--windows: 'label:2024-01-09' \(in 'label:2024-01-01,2024-01-09'\) "
                                         r"matches no window label \(the 4 labels: 2024-01-01, "):
        select_windows("label:2024-01-01,2024-01-09", DAYS)
    with pytest.raises(InputError, match="'label:2024-01-09..' .* matches no window label"):
        select_windows("label:2024-01-01,2024-01-09..", DAYS)


@pytest.mark.parametrize("spec,why", [
    ("label:2024-01-01..2024-01-0x2", "bounds of different forms"),
    ("label:2015..2016..2017", r"more than one `\.\.`"),
    ("label:..", "is empty"),
    ("label:2024-01-01,", "is empty"),
    ("label:2024-01-03..2024-01-01", "runs backwards"),
])
def test_malformed_label_bounds_are_refused(spec, why):
    with pytest.raises(InputError, match=f"^--windows: bad window SPEC .*{why}"):
        select_windows(spec, DAYS)


@pytest.mark.parametrize("spec", ["1_0", "0-1_0", "\u0663", "1,\u0662", "\uff11"])
def test_window_numbers_are_ascii_digits(spec):
    """int() read `1_0` as 10 and Arabic-Indic or full-width digits as numbers: another window than typed."""
    meta = SimpleNamespace(window_indices=list(range(12)), windows=DAYS.windows, window=DAYS.window)
    with pytest.raises(InputError, match="^--windows: bad window SPEC"):
        select_windows(spec, meta)


def test_integers_users_type_elsewhere_are_ascii_digits_too(tmp_path):
    """`--window rows:1_0`, `--table-size 1_0`, `--bottom-mlp 6_4`, `--embedding robe:ratio=1_6` and any
    integer option (`--windows 1_0`, `--epochs ٣`) were read by int()/float() as 10, 64, 16, 3."""
    import click
    from click.testing import CliRunner

    from lowprec.cli import main
    from lowprec.cli._common import int_list
    from lowprec.data.criteo import parse_table_sizes
    from lowprec.data.csvschema import parse_window_option
    from lowprec.model.sharing import _options

    assert parse_window_option("rows:10") == ("rows", 10) and parse_table_sizes("kaggle:100")[0] == 100
    for bad in ("rows:1_0", "rows:\u0663"):
        with pytest.raises(InputError, match="--window"):
            parse_window_option(bad)
    for bad in ("1_0", "kaggle:1_000", "\u0663" * 3):
        with pytest.raises(InputError, match="--table-size"):
            parse_table_sizes(bad)
    assert int_list("64, 32", "--top-mlp") == (64, 32)
    with pytest.raises(click.BadParameter, match="--top-mlp"):
        int_list("6_4", "--top-mlp")
    table = SimpleNamespace(name="t")
    assert _options(table, "robe", {"ratio": "16", "z": "8"}, {"ratio": float, "z": int}) == {"ratio": 16.0, "z": 8}
    for ratio in ("1_6", "\u0661\u0666"):
        with pytest.raises(InputError, match="option ratio="):
            _options(table, "robe", {"ratio": ratio}, {"ratio": float})
    for option, value in (("--windows", "1_0"), ("--rows-per-window", "\u0663")):
        res = CliRunner().invoke(main, ["data", "synth", "--out", str(tmp_path / "s"), option, value])
        assert res.exit_code == 2 and "is not a plain decimal integer" in res.output, res.output
    assert not (tmp_path / "s").exists()


def test_integers_in_environment_variables_are_ascii_digits(monkeypatch, tmp_path):
    """str.isdigit() passes `²`, which int() then refuses: a traceback at start-up, not exit 2."""
    from lowprec import distributed
    from lowprec.data.parts import part_bytes

    monkeypatch.setenv("WORLD_SIZE", "\u00b2")
    with pytest.raises(InputError, match="WORLD_SIZE='\u00b2' is not a number of processes"):
        distributed.env_world_size()
    monkeypatch.setenv("LOWPREC_DIST_TIMEOUT", "1_20")
    with pytest.raises(InputError, match="LOWPREC_DIST_TIMEOUT='1_20'"):
        distributed.timeout_s()
    monkeypatch.setenv("LOWPREC_CSV_PART_BYTES", "\u00b9\u2070")
    with pytest.raises(InputError, match="LOWPREC_CSV_PART_BYTES"):
        part_bytes([], 2)
