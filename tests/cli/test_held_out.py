"""`test` and `validate` score only rows the checkpoint's fit held out: the split it drew travels in the checkpoint."""

import pytest
import torch

from lit_linreg import TableDataModule
from lit_linreg.cli.checkpoint_stamp import STAMP
from lit_linreg.cli.main import main
from lit_linreg.model.module import LinearRegression
from tests.conftest import QUIET, ROOT, config, latest_version, scalars

TABLE = ["--config", config("table.yaml"), "--trainer.max_epochs", "2"]  # data/houses.csv, 300 rows


def best(root):
    return str(next((latest_version(root) / "checkpoints").glob("best-*.ckpt")))


@pytest.fixture(scope="module")
def held_out(tmp_path_factory):
    """A fit that held out a fifth of the rows for test: its root and its best checkpoint."""
    root = tmp_path_factory.mktemp("held_out") / "runs"
    assert main(["fit", *TABLE, "--data.test_fraction", "0.2", *QUIET, "--trainer.default_root_dir", str(root)]) == 0
    return root, best(root)


def test_test_after_a_fit_on_every_row_is_refused_in_one_line(run_cli, tmp_path, capsys):
    assert run_cli("fit", *TABLE, "--data.val_fraction", "0") == 0
    checkpoint = best(tmp_path / "runs")
    capsys.readouterr()
    assert run_cli("test", *TABLE, "--ckpt_path", checkpoint, "--data.test_fraction", "0.2") != 0
    assert capsys.readouterr().err.splitlines() == [
        f"lit-linreg: error: {checkpoint}: the fit held out no test rows (--data.test_fraction 0): every row of"
        f" {ROOT / 'data' / 'houses.csv'} trained or validated it; hold rows out with --data.test_fraction at fit"
        " time, or test on a separate table with --data.test_path"
    ]
    assert run_cli("validate", *TABLE, "--ckpt_path", checkpoint, "--data.val_fraction", "0") != 0
    assert "the fit held out no validation rows (--data.val_fraction 0)" in capsys.readouterr().err


def test_test_on_the_fits_own_held_out_rows_scores_them(run_cli, held_out, tmp_path, capsys):
    root, checkpoint = held_out
    assert run_cli("test", *TABLE, "--ckpt_path", checkpoint, "--data.test_fraction", "0.2") == 0
    assert "test/loss" in capsys.readouterr().out
    logged = scalars(latest_version(tmp_path / "runs"))["test/loss"][-1][1]
    x, y = TableDataModule(str(ROOT / "data" / "houses.csv"), ["price_k"], test_fraction=0.2).load("test")["test"]
    model = LinearRegression.load_from_checkpoint(checkpoint, map_location="cpu").eval()
    with torch.no_grad():
        assert logged == pytest.approx(float((model(x) - y).square().mean()), rel=1e-5)  # these 59 rows' MSE
    assert run_cli("validate", *TABLE, "--ckpt_path", checkpoint, "--data.test_fraction", "0.2") == 0


def test_another_split_of_the_table_or_the_table_as_test_path_is_refused(run_cli, held_out, tmp_path, capsys):
    _, checkpoint = held_out
    assert run_cli("test", *TABLE, "--ckpt_path", checkpoint, "--data.test_fraction", "0.3") != 0
    assert "test with the fit's split (--data.test_fraction 0.2), or on a separate table" in capsys.readouterr().err
    assert run_cli("test", *TABLE, "--ckpt_path", checkpoint, "--data.test_fraction", "0.2", "--data.seed", "1") != 0
    assert "(--data.seed 0)" in capsys.readouterr().err
    houses = str(ROOT / "data" / "houses.csv")
    assert run_cli("test", *TABLE, "--ckpt_path", checkpoint, "--data.test_path", houses) != 0
    assert f"--data.test_path {houses} is the table the fit drew" in capsys.readouterr().err
    rows = (ROOT / "data" / "houses.csv").read_text().splitlines()
    (tmp_path / "new.csv").write_text("\n".join(rows[:1] + rows[-20:]) + "\n")  # a separate table: it runs
    assert run_cli("test", *TABLE, "--ckpt_path", checkpoint, "--data.test_path", str(tmp_path / "new.csv")) == 0


def test_a_checkpoint_written_before_it_kept_its_split_still_tests_saying_so_in_one_line(run_cli, held_out, tmp_path):
    _, checkpoint = held_out
    older = torch.load(checkpoint, map_location="cpu", weights_only=True)
    assert older[STAMP]["split"]["test_fraction"] == 0.2  # what this fit's checkpoint keeps
    del older[STAMP]["split"]
    torch.save(older, tmp_path / "older.ckpt")
    lines = []
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr("lit_linreg.cli.checkpoint_stamp.rank_zero_info", lines.append)
        assert run_cli("test", *TABLE, "--ckpt_path", str(tmp_path / "older.ckpt"), "--data.test_fraction", "0.2") == 0
    assert lines == [
        f"{tmp_path / 'older.ckpt'}: written before checkpoints kept their split: whether its fit saw the test rows"
        " is unknown"
    ]
