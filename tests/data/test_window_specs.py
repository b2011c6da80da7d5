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
