"""The user's own table: every format trains from a path and a target; each rule of columns and cells holds."""

from __future__ import annotations

import csv
import gzip
import os

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from lit_linreg import LinearRegression, TableDataModule
from lit_linreg.errors import ConfigError, DataError
from lit_linreg.tables.table import Table, sniff_delimiter
from tests.conftest import ROOT, config, latest_version

# A small cars table: a text name, a categorical origin, three numeric columns. y = 2 w - 3 h + origin effect.
NAMES = ["chevrolet chevelle", "buick skylark", "plymouth fury", "amc rebel", "ford torino", "vw beetle"]
ORIGINS = ["USA", "USA", "USA", "Europe", "USA", "Europe", "Japan", "Japan"]


def cars(n: int = 40, seed: int = 0) -> dict[str, list]:
    rng = np.random.default_rng(seed)
    weight, hp = rng.uniform(1, 5, n).round(3), rng.uniform(50, 200, n).round(1)
    origin = [ORIGINS[i % len(ORIGINS)] for i in range(n)]
    effect = np.array([{"USA": 0.0, "Europe": 5.0, "Japan": 9.0}[o] for o in origin])
    mpg = (2 * weight - 0.03 * hp + effect + rng.normal(0, 0.1, n)).round(4)
    return {
        "name": [NAMES[i % len(NAMES)] for i in range(n)],
        "origin": origin,
        "weight": weight.tolist(),
        "hp": hp.tolist(),
        "mpg": mpg.tolist(),
    }


def write_csv(path, columns: dict[str, list], delimiter=",", newline="\n", bom=False, opener=open):
    with opener(path, "wt", newline="", encoding="utf-8-sig" if bom else "utf-8") as f:
        writer = csv.writer(f, delimiter=delimiter, lineterminator=newline, quoting=csv.QUOTE_MINIMAL)
        writer.writerow(columns)
        writer.writerows(zip(*columns.values(), strict=True))
    return path


def numeric(columns: dict[str, list], names: list[str]) -> np.ndarray:
    return np.array([[np.nan if v in ("", None) else float(v) for v in columns[n]] for n in names]).T


# --- Every format trains with only a path and targets --------------------------------------------------------------
def make_text_columns(tmp):
    return write_csv(tmp / "cars.csv", cars()), ["mpg"]


def make_empty_cells(tmp):
    table = cars()
    table["hp"][3] = ""
    table["mpg"][7] = ""  # a missing target
    return write_csv(tmp / "gaps.csv", table), ["mpg"]


def make_tsv(tmp):
    return write_csv(tmp / "cars.tsv", cars(), delimiter="\t"), ["mpg"]


def make_semicolons(tmp):
    return write_csv(tmp / "cars.csv", cars(), delimiter=";"), ["mpg"]


def make_quoted_crlf_bom(tmp):
    table = cars()
    table["name"] = [f"{n}, {i}" for i, n in enumerate(table["name"])]  # commas inside quoted fields
    return write_csv(tmp / "quoted.csv", table, newline="\r\n", bom=True), ["mpg"]


def make_gzip(tmp):
    return write_csv(tmp / "cars.csv.gz", cars(), opener=gzip.open), ["mpg"]


def make_parquet(tmp):
    path = tmp / "cars.parquet"
    pq.write_table(pa.table(cars()), path)
    return path, ["mpg"]


def make_parquet_dir(tmp):
    table = pa.table(cars())
    (tmp / "cars").mkdir()
    pq.write_table(table.slice(0, 25), tmp / "cars" / "part-0.parquet")
    pq.write_table(table.slice(25), tmp / "cars" / "part-1.parquet")
    return tmp / "cars", ["mpg"]


def make_three_targets(tmp):
    table = cars()
    table["mpg2"] = [2 * v for v in table["mpg"]]
    table["kpl"] = [0.425 * v for v in table["mpg"]]
    return write_csv(tmp / "three.csv", table), ["mpg", "mpg2", "kpl"]


FORMATS = [
    make_text_columns,
    make_empty_cells,
    make_tsv,
    make_semicolons,
    make_quoted_crlf_bom,
    make_gzip,
    make_parquet,
    make_parquet_dir,
    make_three_targets,
]


@pytest.mark.parametrize("make", FORMATS, ids=[f.__name__.removeprefix("make_") for f in FORMATS])
def test_each_format_reads_the_numeric_columns_exactly(make, tmp_path):
    path, targets = make(tmp_path)
    dm = TableDataModule(str(path), targets=targets, val_fraction=0.0, standardize=False)
    assert dm.feature_names == ["weight", "hp"]  # the text columns are ignored, not refused
    x, y = dm.load("fit")["train"]
    assert x.dtype == torch.float32 and y.shape[1] == len(targets)
    want = numeric(cars(), ["weight", "hp", "mpg"])
    if make is make_empty_cells:  # rows 3 (hp) and 7 (mpg) are dropped, as R's lm does
        want = np.delete(want, [3, 7], axis=0)
    got = torch.cat([x, y[:, :1]], 1).numpy()  # in a seeded shuffled order
    assert sorted(map(tuple, got.tolist())) == sorted(map(tuple, want.astype(np.float32).tolist()))


@pytest.mark.parametrize("make", FORMATS, ids=[f.__name__.removeprefix("make_") for f in FORMATS])
def test_each_format_trains_from_the_cli_with_path_and_targets_only(make, tmp_path, run_cli):
    path, targets = make(tmp_path)
    argv = ["fit", "--config", config("table.yaml"), "--data.path", str(path), "--data.targets", str(targets)]
    assert run_cli(*argv, "--trainer.max_epochs", "2") == 0
    model = LinearRegression.load_from_checkpoint(
        latest_version(tmp_path / "runs") / "checkpoints" / "last.ckpt", weights_only=True
    )
    assert model.schema["features"] == ["weight", "hp"] and model.schema["targets"] == targets


def test_the_shipped_example_table_trains_and_names_its_coefficients(tmp_path, run_cli, capsys, caplog):
    argv = ["fit", "--config", config("table.yaml"), "--data.categorical", "[neighbourhood]"]
    assert run_cli(*argv, "--trainer.max_epochs", "2") == 0
    out = capsys.readouterr().out
    assert "ignored columns: id (text, not in --data.categorical); address (text" in caplog.text
    assert "dropped 6 of 300 rows with a missing value" in caplog.text  # 5 empty cells, 1 empty price
    assert "price_k/neighbourhood=Riverside, east bank" in out
    assert "price_k/(intercept)" in out


# --- Columns by type ---------------------------------------------------------------------------------------------
def test_a_stray_word_in_a_numeric_column_is_a_bad_cell_not_a_text_column(tmp_path):
    table = cars()
    table["hp"][4] = "oops"
    path = write_csv(tmp_path / "stray.csv", table)
    dm = TableDataModule(str(path), targets=["mpg"])
    assert dm.feature_names == ["weight", "hp"]  # still numeric
    with pytest.raises(DataError, match=rf"^{path}: row 6, column 'hp': 'oops' is not a number$"):
        dm.load("fit")


def test_a_text_column_is_used_only_when_listed_as_categorical_and_then_one_hot(tmp_path):
    path = write_csv(tmp_path / "cars.csv", cars())
    with pytest.raises(DataError, match="column 'origin' holds text; list it in --data.categorical"):
        TableDataModule(str(path), targets=["mpg"], features=["weight", "origin"])
    dm = TableDataModule(str(path), targets=["mpg"], categorical=["origin"], val_fraction=0, standardize=False)
    assert dm.schema["categories"] == {"origin": ["Europe", "Japan", "USA"]}
    model = LinearRegression(dm.in_features, dm.out_features, schema=dm.schema)
    assert model.design_names == ["weight", "hp", "origin=Japan", "origin=USA"]
    x, _ = dm.load("fit")["train"]
    codes = x[:, 2]
    assert set(codes.tolist()) == {0.0, 1.0, 2.0}
    design = model.design.encoder(x)
    assert torch.equal(design[:, 2], (codes == 1).float()) and torch.equal(design[:, 3], (codes == 2).float())


def test_categorical_levels_and_fills_travel_in_a_weights_only_checkpoint(tmp_path, run_cli):
    path = write_csv(tmp_path / "cars.csv", cars())
    argv = ["fit", "--config", config("table.yaml"), "--data.path", str(path), "--data.targets", "[mpg]"]
    assert run_cli(*argv, "--data.categorical", "[origin]", "--data.missing", "mean", "--trainer.max_epochs", "2") == 0
    ckpt = latest_version(tmp_path / "runs") / "checkpoints" / "last.ckpt"
    raw = torch.load(ckpt, weights_only=True)
    assert raw["hyper_parameters"]["schema"]["categories"] == {"origin": ["Europe", "Japan", "USA"]}
    model = LinearRegression.load_from_checkpoint(ckpt, weights_only=True)
    table_means = numeric(cars(), ["weight", "hp"]).mean(axis=0)  # the fills are the training rows' means
    np.testing.assert_allclose(model.design.encoder.fill[:2].numpy(), table_means, rtol=0.1)
    assert model.design.encoder.fill[2].item() == 0.0  # nothing fills a categorical column


def test_an_unseen_category_is_refused_naming_value_and_column_unless_mapped_to_zeros(tmp_path, run_cli, capsys):
    path = write_csv(tmp_path / "cars.csv", cars())
    new = write_csv(tmp_path / "new.csv", {"origin": ["USA", "Mars"], "weight": [2.0, 2.0], "hp": [100, 100]})
    base = ["--config", config("table.yaml"), "--data.path", str(path), "--data.targets", "[mpg]"]
    base += ["--data.categorical", "[origin]"]
    assert run_cli("fit", *base, "--trainer.max_epochs", "1") == 0
    predict = ["predict", *base, "--ckpt_path", "last", "--data.predict_path", str(new)]
    assert run_cli(*predict) == 2
    assert f"{new}: row 3, column 'origin': category 'Mars' was not seen in training" in capsys.readouterr().err
    assert run_cli(*predict, "--data.unknown_category", "zeros") == 0
    with open(latest_version(tmp_path / "runs") / "predictions.csv") as f:
        rows = list(csv.DictReader(f))
    reference_level = float(rows[1]["predicted_mpg"])  # Mars -> the reference level, Europe
    assert reference_level != float(rows[0]["predicted_mpg"])


# --- Missing values ------------------------------------------------------------------------------------------------
def gappy(tmp_path):
    table = cars()
    table["hp"][3] = ""
    table["weight"][5] = "NA"
    table["mpg"][7] = ""
    return write_csv(tmp_path / "gaps.csv", table)


def test_missing_cells_drop_their_rows_by_default_and_say_how_many(tmp_path, caplog):
    dm = TableDataModule(str(gappy(tmp_path)), targets=["mpg"], val_fraction=0)
    assert len(dm.load("fit")["train"][0]) == 37
    assert "dropped 3 of 40 rows with a missing value in a used column" in caplog.text


def test_missing_error_refuses_the_first_missing_cell(tmp_path):
    path = gappy(tmp_path)
    with pytest.raises(DataError, match=rf"^{path}: row 5, column 'hp' is empty or missing"):
        TableDataModule(str(path), targets=["mpg"], missing="error").load("fit")


def test_missing_mean_fills_features_with_training_means_and_still_drops_a_missing_target(tmp_path):
    dm = TableDataModule(str(gappy(tmp_path)), targets=["mpg"], val_fraction=0)
    dm.missing = dm.schema["missing"] = "mean"
    dm.setup("fit")
    x, y = dm.splits["train"]
    assert len(x) == 39 and torch.isnan(x).sum() == 2  # the target's row dropped; two features to fill
    dm.load("fit")  # the same rows again: setup kept their float64 values only for the statistics pass
    train64 = dm._train64[0].numpy()
    np.testing.assert_allclose(dm.statistics["fill"].numpy(), np.nanmean(train64, axis=0), rtol=1e-12)
    filled = np.where(np.isnan(train64), np.nanmean(train64, axis=0), train64)
    np.testing.assert_allclose(dm.statistics["x_mean"].numpy(), filled.mean(axis=0), rtol=1e-12)


def test_an_infinite_value_is_refused_not_dropped(tmp_path):
    table = cars()
    table["weight"][2] = "inf"
    path = write_csv(tmp_path / "inf.csv", table)
    with pytest.raises(DataError, match=rf"^{path}: row 4, column 'weight': inf is not a finite number$"):
        TableDataModule(str(path), targets=["mpg"]).load("fit")


# --- Predict from the checkpoint alone -----------------------------------------------------------------------------
def test_predict_needs_only_the_checkpoint_and_a_file_of_features_in_any_order(tmp_path, run_cli):
    path = write_csv(tmp_path / "cars.csv", cars())
    base = ["--config", config("table.yaml"), "--data.path", str(path), "--data.targets", "[mpg]"]
    assert run_cli("fit", *base, "--data.categorical", "[origin]", "--trainer.max_epochs", "3") == 0
    ckpt = latest_version(tmp_path / "runs") / "checkpoints" / "last.ckpt"
    os.remove(path)  # the training file is gone
    new = {
        "id": ["a-1", "b-2"],
        "hp": ["100.50", "1e2"],
        "predicted_mpg": ["x", "y"],
        "origin": ["Japan", "USA"],
        "weight": ["2", "3.000"],
    }
    new_path = write_csv(tmp_path / "new.csv", new)
    assert run_cli("predict", *base, "--ckpt_path", str(ckpt), "--data.predict_path", str(new_path)) == 0
    with open(latest_version(tmp_path / "runs") / "predictions.csv", newline="") as f:
        rows = list(csv.reader(f))
    assert rows[0] == ["id", "hp", "predicted_mpg", "origin", "weight", "_predicted_mpg"]  # no collision
    assert [r[:5] for r in rows[1:]] == [list(v) for v in zip(*new.values(), strict=True)]  # as written
    model = LinearRegression.load_from_checkpoint(ckpt, weights_only=True)
    x = torch.tensor([[2.0, 100.5, 1.0], [3.0, 100.0, 2.0]])  # weight, hp, origin code (Japan 1, USA 2)
    assert [float(r[5]) for r in rows[1:]] == pytest.approx(model(x).squeeze(1).tolist(), rel=1e-6)


# --- Splits, names and precision -----------------------------------------------------------------------------------
def test_test_fraction_holds_out_rows_that_neither_train_nor_validate(tmp_path):
    path = write_csv(tmp_path / "cars.csv", cars(100))
    splits = TableDataModule(str(path), targets=["mpg"], val_fraction=0.2, test_fraction=0.1).load("fit")
    rows = {name: {tuple(r) for r in torch.cat(splits[name], 1).tolist()} for name in ("train", "val", "test")}
    assert (len(splits["train"][0]), len(splits["val"][0]), len(splits["test"][0])) == (70, 20, 10)
    assert not rows["train"] & rows["test"] and not rows["val"] & rows["test"] and not rows["train"] & rows["val"]


def test_test_path_is_used_for_test_when_no_rows_are_held_out(tmp_path):
    path = write_csv(tmp_path / "cars.csv", cars(40))
    other = write_csv(tmp_path / "later.csv", cars(12, seed=9))
    dm = TableDataModule(str(path), targets=["mpg"], test_path=str(other))
    x, y = dm.load("test")["test"]
    np.testing.assert_allclose(y[:, 0].numpy(), np.array(cars(12, seed=9)["mpg"], dtype=np.float32))


def test_statistics_see_the_files_float64_values(tmp_path):
    # 1e8 + small steps: float32 cannot hold them (its spacing near 1e8 is 8), float64 can.
    big = [1e8 + 0.25 * i for i in range(40)]
    table = {"big": big, "y": [float(i) for i in range(40)]}
    path = write_csv(tmp_path / "big.csv", table)
    dm = TableDataModule(str(path), targets=["y"], val_fraction=0)
    dm.setup("fit")
    assert dm.statistics["x_mean"].item() == pytest.approx(np.mean(big), abs=1e-6)
    assert dm.statistics["x_std"].item() == pytest.approx(np.std(big), rel=1e-9)


# --- Bad input specific to tables ----------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("text", "delimiter"),
    [("a,b\n1,2\n", ","), ("a;b\n1,5;2\n", ";"), ("a\tb\n1\t2\n", "\t"), ('a|"b|c"\n1|2\n', "|"), ("a\n1\n", ",")],
)
def test_the_delimiter_is_sniffed(text, delimiter):
    assert sniff_delimiter(text) == delimiter


def test_a_fifo_is_refused_without_blocking(tmp_path):
    fifo = tmp_path / "pipe.csv"
    os.mkfifo(fifo)
    with pytest.raises(DataError, match="not a regular file"):
        Table(fifo)


def test_a_target_listed_as_a_feature_is_refused(tmp_path):
    path = write_csv(tmp_path / "cars.csv", cars())
    with pytest.raises(ConfigError, match="column 'mpg' is a target: it cannot also be a feature"):
        TableDataModule(str(path), targets=["mpg"], features=["weight", "mpg"])


def test_the_format_override_reads_parquet_under_any_name(tmp_path):
    path = tmp_path / "cars.data"
    pq.write_table(pa.table(cars()), path)
    assert TableDataModule(str(path), targets=["mpg"], format="parquet").feature_names == ["weight", "hp"]


def test_the_example_table_is_the_shipped_one():
    assert Table(ROOT / "data" / "houses.csv").kinds == {
        "id": "text",
        "address": "text",
        "neighbourhood": "text",
        "area_m2": "number",
        "rooms": "number",
        "age_years": "number",
        "distance_km": "number",
        "price_k": "number",
    }


# --- Memory --------------------------------------------------------------------------------------------------------
def test_a_parquet_table_is_read_into_memory_with_no_float64_copy_of_it(tmp_path):
    # pyarrow's defaults, as a user writes a table: nullable columns, dictionary encoding. torch's tensors and
    # pyarrow's buffers are not traced: numpy's arrays are, and a float64 copy of the table would be 2x its bytes.
    import tracemalloc

    n, d = 200_000, 8
    rng = np.random.default_rng(0)
    columns = {f"x{j}": rng.normal(size=n).astype(np.float32) for j in range(d)} | {"y": rng.normal(size=n)}
    pq.write_table(pa.table(columns).cast(pa.schema([(c, pa.float32()) for c in columns])), tmp_path / "t.parquet")
    dm = TableDataModule(str(tmp_path / "t.parquet"), targets=["y"])
    tracemalloc.start()
    try:
        splits = dm.load("fit")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    data_bytes = n * (d + 1) * 4
    assert peak < 1.0 * data_bytes, f"numpy's peak was {peak / data_bytes:.2f}x the table's float32 bytes"
    assert len(splits["train"][0]) + len(splits["val"][0]) == n


def test_statistics_see_a_parquet_tables_float64_values_read_again_a_block_at_a_time(tmp_path):
    # 1e8 + small steps in a float64 column: the float32 training rows cannot hold them, so the pass reads the file.
    big = [1e8 + 0.25 * i for i in range(40_000)]
    pq.write_table(pa.table({"big": big, "y": [float(i % 7) for i in range(40_000)]}), tmp_path / "big.parquet")
    dm = TableDataModule(str(tmp_path / "big.parquet"), targets=["y"], val_fraction=0)
    dm.setup("fit")
    assert dm.statistics["x_mean"].item() == pytest.approx(np.mean(big), abs=1e-6)
    assert dm.statistics["x_std"].item() == pytest.approx(np.std(big), rel=1e-9)
    assert dm._reread is None  # the pass is done: nothing of the file is kept


def test_a_parquet_file_is_read_block_by_block_without_its_row_groups_buffered_at_once(tmp_path):
    # pyarrow pre-buffers every row group asked for: the whole file, held while its blocks are decoded (69 MiB for
    # the benchmark's 49 MiB files). Read by a small buffered stream, it holds a row group or so at a time.
    from lit_linreg.tables.parquet import read_blocks

    n, k = 8 * 16384, 8
    rng = np.random.default_rng(0)
    path = tmp_path / "t.parquet"
    pq.write_table(pa.table({f"x{j}": rng.normal(size=n).astype(np.float32) for j in range(k)}), path,
                   row_group_size=16384)  # fmt: skip
    table, peak, rows = Table(str(path)), 0, 0
    for _, block in read_blocks(table.row_groups(), [f"x{j}" for j in range(k)], 2048):
        peak, rows = max(peak, pa.default_memory_pool().bytes_allocated()), rows + block.num_rows
    assert rows == n
    assert peak < os.path.getsize(path) / 2, f"pyarrow held {peak / os.path.getsize(path):.2f}x the file's bytes"
