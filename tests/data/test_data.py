import csv

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from lit_linreg import LinearRegression, SyntheticDataModule, TableDataModule
from lit_linreg.data.loader import EpochShuffle, TensorLoader, batches_per_epoch
from lit_linreg.errors import DataError
from lit_linreg.tables.convert import main as convert_main
from lit_linreg.tables.convert import stream_schema
from tests.conftest import ROOT, config, latest_version, record_fault

HOUSES = ROOT / "data" / "houses.csv"
FEATURES = ["area_m2", "rooms", "age_years", "distance_km"]


def houses() -> np.ndarray:
    """The example table's numeric columns (four features, then the price), rows with an empty cell left out."""
    with open(HOUSES, newline="") as f:
        rows = [[row[c] for c in [*FEATURES, "price_k"]] for row in csv.DictReader(f)]
    return np.array([[float(v) for v in row] for row in rows if all(row)])


def test_each_epoch_is_a_fresh_permutation_replayed_exactly_from_seed_and_epoch():
    shuffle = EpochShuffle(1000, seed=3)
    orders = []
    for epoch in (0, 1, 0):
        shuffle.set_epoch(epoch)
        orders.append(shuffle.indices())
    assert sorted(orders[0].tolist()) == list(range(1000))  # every row once: without replacement
    assert not torch.equal(orders[0], orders[1])
    assert torch.equal(orders[0], orders[2])  # a resumed run at epoch 0 sees the same order
    assert not torch.equal(EpochShuffle(1000, seed=4).indices(), orders[0])


def test_a_training_loader_cuts_its_rows_into_the_batches_every_rank_agrees_on():
    x = torch.arange(1003.0)[:, None]
    loader = TensorLoader(x, batch_size=64, shuffle=True, n_batches=batches_per_epoch(1004, 64))  # 16 batches
    sizes = [len(batch[0]) for batch in loader]
    assert len(loader) == len(sizes) == 16 and max(sizes) - min(sizes) <= 1
    assert sorted(torch.cat([batch[0] for batch in loader]).flatten().tolist()) == list(range(1003))  # each row once
    ranks = [torch.cat([b[0] for b in TensorLoader(x, batch_size=64, shuffle=True, rank=r)]) for r in (0, 1)]
    assert not torch.equal(ranks[0], ranks[1])  # ranks shuffle their own rows differently


def test_a_loader_resumed_mid_epoch_hands_out_the_rest_of_the_same_order():
    x = torch.arange(100.0)[:, None]
    full = TensorLoader(x, batch_size=10, shuffle=True, seed=4)
    full.sampler.set_epoch(2)
    batches = [b[0] for b in full]
    resumed = TensorLoader(x, batch_size=10, shuffle=True, seed=4)
    resumed.load_state_dict({"epoch": 2, "batches": 3})
    resumed.sampler.set_epoch(2)
    rest = [b[0] for b in resumed]
    assert len(rest) == 7 and all(torch.equal(a, b) for a, b in zip(batches[3:], rest, strict=True))
    resumed.sampler.set_epoch(3)
    assert len(list(resumed)) == 10  # the next epoch is whole again


@pytest.mark.parametrize("world_size", [2, 3])
def test_synthetic_ranks_make_only_their_share_of_the_same_data_set(world_size):
    def make():
        return SyntheticDataModule(n_samples=150_000, n_features=3, val_fraction=0.1, seed=2)

    whole = make().load("fit")
    block = SyntheticDataModule.GENERATION_BLOCK
    assert not torch.equal(whole["train"][0][:8], whole["train"][0][block : block + 8])  # blocks have their own seeds
    shares = [make().load_share("fit", rank, world_size) for rank in range(world_size)]
    for split in ("train", "val"):
        sizes = [len(share[split][0]) for share in shares]
        assert sum(sizes) == len(whole[split][0]) and max(sizes) - min(sizes) <= 1
        for i in (0, 1):
            assert torch.equal(torch.cat([share[split][i] for share in shares]), whole[split][i])


def test_parquet_ranks_read_only_their_row_groups_and_cover_every_row_once(tmp_path):
    assert convert_main([str(HOUSES), str(tmp_path / "pq"), "--rows-per-group", "25", "--rows-per-file", "100"]) == 0
    assert len(list((tmp_path / "pq").glob("*.parquet"))) == 3

    def make():
        return TableDataModule(str(tmp_path / "pq"), targets=["price_k"], val_fraction=0.25, seed=1)

    whole = make().load("fit")
    assert sorted(map(tuple, torch.cat([whole["train"][0], whole["val"][0]]).tolist())) == sorted(
        map(tuple, houses()[:, :4].astype(np.float32).tolist())
    )
    table = make()._table(tmp_path / "pq")
    groups = [table.share(rank, 2).groups for rank in (0, 1)]
    assert [len(g) for g in groups] == [6, 6] and {g.first_row for g in groups[1]}.isdisjoint(
        g.first_row for g in groups[0]
    )
    shares = [make().load_share("fit", rank, 2) for rank in (0, 1)]
    for split in ("train", "val"):
        together = torch.cat([torch.cat(share[split], 1) for share in shares])
        assert sorted(map(tuple, together.tolist())) == sorted(map(tuple, torch.cat(whole[split], 1).tolist()))


def test_convert_declares_required_exactly_the_columns_with_no_missing_value_from_csv_or_parquet(tmp_path):
    # The houses have one empty cell in each numeric column; id, address and neighbourhood are complete.
    assert convert_main([str(HOUSES), str(tmp_path / "pq"), "--rows-per-group", "100"]) == 0
    schema = pq.read_schema(tmp_path / "pq" / "part-00000.parquet")
    nullable = {field.name for field in schema if field.nullable}
    assert nullable == {*FEATURES, "price_k"}
    complete = pa.table({"x": [1.0, 2.0, 3.0], "y": [0.5, None, 1.5], "n": [1, 2, 3]})
    for statistics in (True, False):  # counted in the footers, or by reading the rows
        source = tmp_path / f"source_{statistics}.parquet"
        pq.write_table(complete, source, write_statistics=statistics)
        assert convert_main([str(source), str(tmp_path / f"out_{statistics}")]) == 0
        written = pq.read_table(tmp_path / f"out_{statistics}")
        assert [f.nullable for f in written.schema] == [False, True, False]
        assert written.cast(complete.schema).equals(complete)
    # A struct with a missing value at its top level: a footer counts its leaf's nulls, under another name.
    nested = pa.table({"x": [1.0, 2.0], "s": pa.array([{"a": 1.0}, None])})
    pq.write_table(nested, tmp_path / "nested.parquet")
    assert convert_main([str(tmp_path / "nested.parquet"), str(tmp_path / "nested")]) == 0
    assert pq.read_table(tmp_path / "nested").equals(nested.cast(stream_schema(nested.schema, {"s"})))
    # Two conversions, one with a missing value and one without, read as one table; the pandas index survives.
    for name, text in (("jan", "x,y\n1,2\n3,4\n"), ("feb", "x,y\n1,2\n,4\n5,6\n")):
        (tmp_path / f"{name}.csv").write_text(text)
        assert convert_main([str(tmp_path / f"{name}.csv"), str(tmp_path / "months" / name)]) == 0
    both = TableDataModule(str(tmp_path / "months"), targets=["y"], val_fraction=0, test_fraction=0).load("fit")
    assert sorted(both["train"][1].flatten().tolist()) == [2.0, 2.0, 4.0, 6.0]  # the row with no x dropped
    frame = pa.Table.from_pandas(pa.table({"x": [1.0, 2.0]}).to_pandas().set_axis([5, 6]))
    pq.write_table(frame, tmp_path / "indexed.parquet")
    assert convert_main([str(tmp_path / "indexed.parquet"), str(tmp_path / "indexed")]) == 0
    assert pq.read_schema(tmp_path / "indexed" / "part-00000.parquet").metadata == frame.schema.metadata


def test_convert_refuses_a_null_its_first_pass_missed_and_leaves_nothing(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(
        "lit_linreg.tables.convert.with_nulls", lambda table: set()
    )  # as if the table changed meanwhile
    record_fault("bad_inputs")
    assert convert_main([str(HOUSES), str(tmp_path / "pq")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "which the first pass did not count" in err, err
    assert not (tmp_path / "pq").exists()


def test_a_parquet_table_with_fewer_row_groups_than_ranks_is_refused_naming_the_fix(tmp_path):
    assert convert_main([str(HOUSES), str(tmp_path / "pq"), "--rows-per-group", "300"]) == 0
    with pytest.raises(DataError, match="1 row groups cannot give each of 2 ranks one.*--rows-per-group"):
        TableDataModule(str(tmp_path / "pq"), targets=["price_k"]).load_share("fit", 0, 2)


def test_unshuffled_batches_are_views_and_shuffled_batches_gather_whole_rows():
    x, y = torch.arange(20.0).reshape(10, 2), torch.arange(10.0)[:, None]
    in_order = list(TensorLoader(x, y, batch_size=4))
    assert [len(b[0]) for b in in_order] == [4, 4, 2]
    assert in_order[1][0].untyped_storage().data_ptr() == x.untyped_storage().data_ptr()  # a slice, no copy
    for bx, by in TensorLoader(x, y, batch_size=3, shuffle=True, seed=1):
        assert torch.equal(bx[:, 0], 2 * by[:, 0])  # x and y rows stay paired


def test_synthetic_data_is_seeded_and_its_true_coefficients_are_recoverable():
    dm = SyntheticDataModule(n_samples=5000, n_features=3, n_targets=2, noise=0.01, val_fraction=0.2, seed=5)
    splits = dm.load("fit")
    x, y = splits["train"]
    assert x.shape == (4000, 3) and y.shape == (4000, 2) and splits["val"][0].shape == (1000, 3)
    assert x.dtype == torch.float32
    design = torch.cat([x, torch.ones(len(x), 1)], dim=1).double()
    theta = torch.linalg.lstsq(design, y.double()).solution  # (4, 2)
    torch.testing.assert_close(theta[:3].T.float(), dm.true_weight, atol=1e-3, rtol=0)
    torch.testing.assert_close(theta[3].float(), dm.true_bias, atol=1e-3, rtol=0)
    again = SyntheticDataModule(n_samples=5000, n_features=3, n_targets=2, noise=0.01, val_fraction=0.2, seed=5)
    assert torch.equal(again.load("fit")["train"][0], x)
    assert not torch.equal(SyntheticDataModule(n_samples=5000, n_features=3, seed=6).load("fit")["train"][0][:, :3], x)


def test_table_module_knows_its_sizes_before_reading_the_rows(tmp_path):
    path = tmp_path / "table.csv"
    path.write_text("a,b,target\n1,2,3\n4,5,6\n7,8,9\n" + "1,2,3\n" * 20000 + "1,oops,3\n")  # past the first block
    dm = TableDataModule(str(path), targets=["target"])
    assert (dm.feature_names, dm.target_names, dm.in_features, dm.out_features) == (["a", "b"], ["target"], 2, 1)
    assert TableDataModule(str(path), targets=["a", "b"], features=["target"]).in_features == 1
    with pytest.raises(DataError, match="row 20005, column 'b': 'oops' is not a number"):
        dm.load("fit")


def test_table_module_reads_the_example_table_with_a_seeded_split():
    expected = houses().astype(np.float32)  # (295, 5)
    dm = TableDataModule(str(HOUSES), targets=["price_k"], val_fraction=0.25, seed=1)
    assert dm.feature_names == FEATURES  # id, address and neighbourhood hold text
    splits = dm.load("fit")
    (x_train, y_train), (x_val, y_val) = splits["train"], splits["val"]
    assert (len(x_train), len(x_val)) == (221, 74)
    together = torch.cat([torch.cat([x_train, y_train], 1), torch.cat([x_val, y_val], 1)])
    assert sorted(map(tuple, together.tolist())) == sorted(map(tuple, expected.tolist()))  # every row, once
    same = TableDataModule(str(HOUSES), targets=["price_k"], val_fraction=0.25, seed=1).load("fit")
    other = TableDataModule(str(HOUSES), targets=["price_k"], val_fraction=0.25, seed=2).load("fit")
    assert torch.equal(same["val"][0], x_val) and not torch.equal(other["val"][0], x_val)


def test_standardization_uses_training_rows_only():
    dm = TableDataModule(str(HOUSES), targets=["price_k"], val_fraction=0.25)
    dm.setup("fit")
    x_train, y_train = dm.splits["train"]
    stats = dm.statistics
    torch.testing.assert_close(stats["x_mean"], x_train.double().mean(0), rtol=1e-6, atol=0)
    torch.testing.assert_close(stats["y_std"], y_train.double().std(0, unbiased=False), rtol=1e-6, atol=0)
    everything = torch.cat([x_train, dm.splits["val"][0]]).double()
    assert not torch.allclose(stats["x_mean"], everything.mean(0))
    assert TableDataModule(str(HOUSES), targets=["price_k"], standardize=False).statistics is None


def test_a_checkpoint_alone_predicts_from_raw_inputs_in_original_units(run_cli, tmp_path):
    assert run_cli("fit", "--config", config("table.yaml")) == 0
    run = latest_version(tmp_path / "runs")
    model = LinearRegression.load_from_checkpoint(run / "checkpoints" / "last.ckpt", weights_only=True)
    table = houses()
    x_raw, y = torch.tensor(table[:, :4], dtype=torch.float32), table[:, 4]
    with torch.no_grad():
        y_hat = model(x_raw).double().squeeze(1).numpy()
    design = np.hstack([table[:, :4], np.ones((len(table), 1))])
    best = design @ np.linalg.lstsq(design, y, rcond=None)[0]
    assert np.sqrt(np.mean((y_hat - y) ** 2)) < 1.05 * np.sqrt(np.mean((best - y) ** 2))  # prices, not z-scores

    assert run_cli("predict", "--config", config("table.yaml"), "--ckpt_path", "last") == 0
    with open(latest_version(tmp_path / "runs") / "predictions.csv") as f:
        predicted = list(csv.DictReader(f))
    assert list(predicted[0]) == [*FEATURES, "predicted_price_k"]  # the validation rows, then the prediction
    row = torch.tensor([[float(predicted[0][c]) for c in FEATURES]])
    assert float(predicted[0]["predicted_price_k"]) == pytest.approx(model(row).item(), rel=1e-5)
