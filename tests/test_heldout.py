"""datasets.heldout: the one held-out split file and function used for model selection on every data set."""

from __future__ import annotations

import json
import os
import stat

import pytest

from datasets.heldout import FORMAT, HeldoutSplit, draw_heldout, fingerprint_of, load_or_create_heldout
from engine.errors import DataError

IDS = list(range(1000, 1030))
FP = fingerprint_of(IDS)


def split(path, **kw):
    args = {"kind": "products", "fingerprint": FP, "count": 5, "seed": 3, "labels": IDS} | kw
    return load_or_create_heldout(path, 30, **args)


def test_same_split_twice_and_what_the_file_holds(tmp_path):
    path = tmp_path / "eval_sets" / "heldout.json"
    first = split(path)
    assert first == split(path) == split(tmp_path / "other.json")  # reused, and deterministic given the seed
    assert first.heldout == draw_heldout(30, 5, 3) and first.train == sorted(set(range(30)) - set(first.heldout))
    record = json.loads(path.read_text(encoding="utf-8"))
    assert record == {"format": FORMAT, "kind": "products", "total": 30, "fingerprint": FP, "seed": 3,
                      "draw": "choice", "count": 5, "fraction": None, "heldout": first.heldout,
                      "heldout_labels": [IDS[i] for i in first.heldout]}
    assert split(tmp_path / "seed4.json", seed=4) != first


def test_the_draws_are_the_ones_the_selection_was_tuned_on():
    # Values of the two draws before the shared module (FashionGen products, FashionIQ references).
    assert draw_heldout(30, 5, 3, "choice") == [3, 15, 20, 24, 25]
    assert draw_heldout(300, 20, 66, "choice")[:5] == [13, 21, 43, 46, 49]
    assert draw_heldout(37, 4, 1, "shuffle") == [2, 9, 34, 35]


def test_count_or_fraction(tmp_path):
    by_fraction = split(tmp_path / "f.json", count=None, fraction=0.1)
    assert len(by_fraction.heldout) == 3 and len(by_fraction.train) == 27
    assert len(split(tmp_path / "small.json", count=None, fraction=0.001).heldout) == 1  # at least one
    with pytest.raises(DataError, match="cannot hold out 30 of 30 products"):
        split(tmp_path / "all.json", count=30)
    with pytest.raises(DataError, match="cannot hold out 0 of 30 products"):
        split(tmp_path / "none.json", count=0)
    with pytest.raises(ValueError, match="exactly one of count and fraction"):
        split(tmp_path / "both.json", fraction=0.1)
    assert not (tmp_path / "all.json").exists() and not (tmp_path / "none.json").exists()


def test_foreign_or_changed_file_is_refused_in_one_line(tmp_path):
    path = tmp_path / "heldout.json"
    split(path)
    for other in ({"fingerprint": fingerprint_of(IDS[::-1])}, {"kind": "references"}):
        with pytest.raises(DataError, match="drawn for another data set") as info:
            split(path, **other)
        assert str(path) in str(info.value) and "\n" not in str(info.value)
    with pytest.raises(DataError, match="drawn for another data set.*total 30 != 31"):
        load_or_create_heldout(path, 31, kind="products", fingerprint=FP, count=5, seed=3)
    for other in ({"count": 6}, {"seed": 4}, {"count": None, "fraction": 0.1}, {"draw": "shuffle"}):
        with pytest.raises(DataError, match="drawn with other options.*delete it or use the same settings"):
            split(path, **other)
    record = json.loads(path.read_text(encoding="utf-8"))
    for broken in ("[1, 2", json.dumps({**record, "format": "x"}), json.dumps({**record, "heldout": [5, 5, 7, 8, 9]})):
        path.write_text(broken, encoding="utf-8")
        with pytest.raises(DataError, match=f"{path}: not a held-out split file"):
            split(path)


def test_written_atomically_with_the_usual_permissions(tmp_path):
    path = tmp_path / "eval_sets" / "heldout.json"
    old = os.umask(0o022)
    try:
        split(path)
    finally:
        os.umask(old)
    assert os.listdir(path.parent) == ["heldout.json"]  # no temporary file left
    assert stat.S_IMODE(path.stat().st_mode) == 0o644


def test_items_of_groups_items_by_unit():
    assert HeldoutSplit([0, 2], [1]).items_of([0, 1, 1, 2, 0]) == HeldoutSplit([0, 3, 4], [1, 2])
