"""Which rows a later `test` or `validate` may score: only those the checkpoint's fit held out (`seen_rows`)."""

import os

import pytest

from lit_linreg import TableDataModule
from lit_linreg.data.splits import seen_rows

FIT = {
    "table": "/data/t.csv",
    "content": [1000, 7],
    "seed": 0,
    "val_fraction": 0.2,
    "test_fraction": 0.1,
    "missing": "drop",
    "test_table": None,
}


def now(**changes):
    return FIT | changes


@pytest.mark.parametrize("stage", ["test", "validate"])
def test_the_fits_own_held_out_rows_may_be_scored(stage):
    assert seen_rows(FIT, now(), stage) is None
    assert seen_rows(FIT, now(table="/data/other.csv"), stage) is None  # none of another table's rows trained
    assert seen_rows(FIT, now(content=None), stage) is None  # a table whose size is not known (a URL)


def test_a_test_without_the_fits_test_rows_is_refused_saying_how_to_hold_rows_out():
    fit = FIT | {"val_fraction": 0.0, "test_fraction": 0.0}
    why = seen_rows(fit, now(val_fraction=0.0, test_fraction=0.2), "test")
    assert why == (
        "the fit held out no test rows (--data.test_fraction 0): every row of /data/t.csv trained or validated it;"
        " hold rows out with --data.test_fraction at fit time, or test on a separate table with --data.test_path"
    )
    assert seen_rows(fit, now(val_fraction=0.0, test_fraction=0.0), "test") == why  # the stand-in: training rows
    assert seen_rows(fit, now(test_fraction=0.0, test_table="/data/new.csv"), "test") is None  # a separate table


@pytest.mark.parametrize(
    "key, value", [("seed", 1), ("test_fraction", 0.3), ("val_fraction", 0.1), ("missing", "mean")]
)
def test_another_split_of_the_same_table_is_refused_naming_the_fits(key, value):
    why = seen_rows(FIT, now(**{key: value}), "test")
    assert why.startswith(f"this test splits /data/t.csv with {key} {value}, the fit split it with {key} {FIT[key]}")
    assert why.endswith(
        f"test with the fit's split (--data.{key} {FIT[key]}), or on a separate table with --data.test_path"
    )
    assert "rows the fit trained on" in seen_rows(FIT, now(**{key: value}), "validate")


def test_the_training_table_as_test_path_a_changed_table_and_validation_on_training_rows_are_refused():
    assert seen_rows(FIT, now(test_fraction=0.0, test_table="/data/t.csv"), "test") == (
        "--data.test_path /data/t.csv is the table the fit drew its training and validation rows from"
    )
    assert seen_rows(FIT, now(content=[1000, 8]), "test").startswith(
        "/data/t.csv changed since the fit (its size or modification time)"
    )
    assert seen_rows(FIT | {"val_fraction": 0.0}, now(val_fraction=0.0), "validate").startswith(
        "the fit held out no validation rows (--data.val_fraction 0): its validation rows were its training rows"
    )


def test_a_table_datamodule_records_its_table_by_real_path_and_the_test_table_only_where_test_reads_it(tmp_path):
    (tmp_path / "t.csv").write_text("x,y\n1,2\n2,4\n3,6\n4,8\n5,10\n")
    (tmp_path / "link.csv").symlink_to(tmp_path / "t.csv")
    dm = TableDataModule(str(tmp_path / "link.csv"), ["y"], seed=3, val_fraction=0.4, test_path=str(tmp_path / "t.csv"))
    real = os.path.realpath(tmp_path / "t.csv")
    assert dm.split == {
        "table": real,
        "seed": 3,
        "val_fraction": 0.4,
        "test_fraction": 0.0,
        "missing": "drop",
        "test_table": real,
    }
    held_out = TableDataModule(str(tmp_path / "t.csv"), ["y"], test_fraction=0.2, test_path=str(tmp_path / "t.csv"))
    assert held_out.split["test_table"] is None  # test reads the held-out rows, not the file
