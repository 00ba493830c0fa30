"""Predicting for a file a block at a time: every row once, as in memory, with one block held at a time."""

import weakref

import numpy as np
import pyarrow as pa
import pyarrow.csv as pcsv
import pyarrow.parquet as pq

from lit_linreg.data import predict_rows
from lit_linreg.data.predict_rows import PredictRows
from lit_linreg.data.rows import RowReader
from lit_linreg.tables.table import Table
from tests.conftest import config, latest_version
from tests.data.test_stream import parquet_table

TARGET = ["--data.targets", "[y]"]


def fit(run_cli, table, root) -> None:
    args = ["--data.path", str(table), *TARGET, "--trainer.max_epochs", "3", "--figure.enabled", "false"]
    assert run_cli("fit", "--config", config("table.yaml"), *args, root=root) == 0


def predict(run_cli, table, root, *extra: str) -> int:
    checkpoint = root / "lightning_logs" / "version_0" / "checkpoints" / "last.ckpt"
    args = ["--data.path", str(table), *TARGET, "--ckpt_path", str(checkpoint), "--trainer.logger", "false", *extra]
    return run_cli("predict", "--config", config("table.yaml"), *args, root=root)


def predictions(root) -> pa.Table:
    return pcsv.read_csv(latest_version(root) / "predictions.csv")


def test_a_parquet_file_is_predicted_block_by_block_as_the_same_rows_in_memory(run_cli, tmp_path, monkeypatch):
    # Blocks of 300 rows cut across the row groups of 1,000: every row comes back once, in the file's order, with
    # its columns as the file holds them, predicted as the same rows read whole (a CSV file is one block).
    table = parquet_table(tmp_path / "pq", n_rows=6000)
    fit(run_cli, table, tmp_path)
    whole = pa.concat_tables(pq.read_table(f) for f in sorted(table.glob("*.parquet")))
    pcsv.write_csv(whole, tmp_path / "whole.csv")

    monkeypatch.setattr(predict_rows, "BLOCK_ROWS", 300)
    read = PredictRows.__iter__
    sizes, earlier, alive = [], [], []

    def watched(rows):
        for x, written in read(rows):
            alive.append(sum(ref() is not None for ref in earlier))  # batches still held as this one is read
            earlier.append(weakref.ref(x))
            sizes.append((len(x), written.num_rows))
            yield x, written
            del x, written

    monkeypatch.setattr(PredictRows, "__iter__", watched)
    assert predict(run_cli, table, tmp_path, "--data.predict_path", str(table)) == 0
    streamed = predictions(tmp_path)
    assert len(sizes) == 20 and {s for s, _ in sizes} == {300} and all(a == b for a, b in sizes)
    # Batches held as the next is read: the one predicted, and the one before it until its step ends (Lightning
    # fetches a batch ahead), whatever the file's rows.
    assert max(alive) == 2

    monkeypatch.setattr(PredictRows, "__iter__", read)
    assert predict(run_cli, table, tmp_path, "--data.predict_path", str(tmp_path / "whole.csv")) == 0
    in_memory = predictions(tmp_path)
    assert streamed.column_names == [*whole.column_names, "predicted_y"]
    for name in whole.column_names:  # the file's float64 numbers, printed in the shortest digits that read back
        assert streamed.column(name).to_pylist() == whole.column(name).to_pylist()
    np.testing.assert_array_equal(streamed.column("predicted_y").to_numpy(), in_memory.column("predicted_y").to_numpy())


def test_ranks_predict_every_row_of_the_file_once(tmp_path):
    # Blocks of 7 rows, batches of 4, row groups of 9: each of 3 ranks takes every third row, as in memory.
    path = tmp_path / "rows.parquet"
    pq.write_table(pa.table({"id": list(range(50)), "x": np.arange(50.0)}), path, row_group_size=9)
    reader = RowReader({"features": ["x"], "targets": ["y"], "categories": {}}, "drop", "error")
    seen = []
    for rank in range(3):
        rows = PredictRows(Table(path), reader, batch_size=4, rank=rank, world_size=3, block_rows=7)
        batches = list(rows)
        ids = [i for _, written in batches for i in written.column("id").to_pylist()]
        assert ids == list(range(rank, 50, 3))
        assert [x.flatten().tolist() for x, _ in batches] == [w.column("x").to_pylist() for _, w in batches]
        seen += ids
    assert sorted(seen) == list(range(50))


def test_a_predict_run_that_fails_midway_leaves_no_predictions_file(run_cli, tmp_path, capsys, monkeypatch):
    # The 5,001st row lacks a feature: predicting refuses it, after four blocks of predictions were written. The
    # half-written file is removed, and no predictions.csv is left to be taken for the whole.
    table = parquet_table(tmp_path / "pq", n_rows=6000)
    fit(run_cli, table, tmp_path)
    whole = pa.concat_tables(pq.read_table(f) for f in sorted(table.glob("*.parquet")))
    x0 = whole.column("x0").to_numpy().copy()
    x0[5000] = np.nan
    pq.write_table(whole.set_column(0, "x0", pa.array(x0)), tmp_path / "new.parquet", row_group_size=500)
    monkeypatch.setattr(predict_rows, "BLOCK_ROWS", 1000)
    capsys.readouterr()
    assert predict(run_cli, table, tmp_path, "--data.predict_path", str(tmp_path / "new.parquet")) == 2
    err = capsys.readouterr().err
    assert "row 5001, column 'x0' is empty or missing (predictions need every feature)" in err
    assert not list(latest_version(tmp_path).glob("predictions.csv*"))


def test_without_a_predict_file_the_validation_rows_are_predicted_held_or_streamed_alike(run_cli, tmp_path):
    # A table too large for memory (in_memory false) predicts its validation rows from the stream, a block at a
    # time, as the rows held in memory are predicted.
    table = parquet_table(tmp_path / "pq", n_rows=4000)
    fit(run_cli, table, tmp_path)
    got = {}
    for in_memory in ("true", "false"):
        assert predict(run_cli, table, tmp_path, "--data.in_memory", in_memory) == 0
        rows = predictions(tmp_path)
        order = np.argsort(rows.column("x0").to_numpy())
        got[in_memory] = np.stack([rows.column(name).to_numpy()[order] for name in rows.column_names], 1)
    assert got["true"].shape == got["false"].shape and got["true"].shape[1] == 7  # six features, y's prediction
    assert 700 < len(got["true"]) < 900  # the validation fraction, 0.2 of 4,000 rows (drawn by a hash of each row)
    np.testing.assert_allclose(got["false"], got["true"], rtol=1e-6)


def test_predictions_csv_repeats_the_file_as_written_quoting_only_the_cells_that_need_it(run_cli, tmp_path):
    table = parquet_table(tmp_path / "pq", n_rows=2000)
    fit(run_cli, table, tmp_path)
    features = ",".join(f"x{j}" for j in range(6))
    rows = [
        'a,"big, bright",' + ",".join(["1.50"] * 6),
        'b,"say ""hi""",' + ",".join(["2"] * 6),
        "c,," + ",".join(["3"] * 6),
    ]
    (tmp_path / "new.csv").write_text(f"id,note,{features}\n" + "\n".join(rows) + "\n")
    assert predict(run_cli, table, tmp_path, "--data.predict_path", str(tmp_path / "new.csv")) == 0
    lines = (latest_version(tmp_path) / "predictions.csv").read_text().splitlines()
    assert lines[0] == f"id,note,{features},predicted_y"
    for line, row in zip(lines[1:], rows, strict=True):  # the digits as written, then the prediction
        assert line.startswith(row + ",") and np.isfinite(float(line.rsplit(",", 1)[1]))
