import csv

import numpy as np
import pytest
import torch

from lit_linreg import LinearRegression, SyntheticDataModule, TableDataModule
from lit_linreg.errors import DataError
from lit_linreg.loader import EpochShuffle, TensorLoader
from tests.conftest import ROOT, config, latest_version

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


@pytest.mark.parametrize("shuffle", [True, False], ids=["shuffled", "in-order"])
def test_ddp_ranks_see_distinct_rows_in_equal_numbers(shuffle):
    x = torch.arange(1003.0)[:, None]  # 1003 rows over 4 ranks: 3 left over
    loaders = [TensorLoader(x, batch_size=64, shuffle=shuffle).shard(rank, 4) for rank in range(4)]
    seen = [torch.cat([batch[0] for batch in loader]).flatten().tolist() for loader in loaders]
    if shuffle:  # equal counts keep the ranks' gradient all-reduces in step
        assert [len(rows) for rows in seen] == [250] * 4
    else:  # evaluation visits every row exactly once
        assert sorted(sum(seen, [])) == list(range(1003))
    assert len(set(sum(seen, []))) == sum(len(rows) for rows in seen)  # no row on two ranks
    assert [len(loader) for loader in loaders] == [len(range(0, len(rows), 64)) for rows in seen]


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
