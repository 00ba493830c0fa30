import signal
import subprocess
import sys
import threading
import time
import weakref

import pytest
import torch

from lit_linreg.cli.checkpoint import find_last, load_checkpoint
from lit_linreg.data import streamed_table
from lit_linreg.data.stream import RowGroupStream, StreamedBatch
from lit_linreg.errors import DataError
from lit_linreg.tables.convert import main as convert_main
from tests.conftest import ROOT, config, latest_version, record_fault, scalars

# 10 row groups of 7 to 16 rows: group g holds rows whose value encodes (group, row).
SIZES = [7, 16, 9, 12, 8, 15, 10, 11, 13, 14]
GROUPS = list(range(len(SIZES)))


def columns(group: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Group `group`'s rows, columns first as a stream reads them: (1, n) and (1, n)."""
    x = group * 100.0 + torch.arange(SIZES[group], dtype=torch.float32)[None, :]
    return x, 2 * x


def read(group: int) -> tuple[tuple[torch.Tensor, torch.Tensor], None]:
    return columns(group), None  # every row of the group


def stream(**kwargs) -> RowGroupStream:
    return RowGroupStream(read, GROUPS, sum(SIZES), **{"batch_size": 8, "shuffle": True, "buffer_rows": 20} | kwargs)


def epoch(loader: RowGroupStream, n: int) -> list[torch.Tensor]:
    loader.sampler.set_epoch(n)
    return [x for x, _ in loader]


def test_each_epoch_visits_every_row_once_in_a_fresh_order_replayed_from_the_seed():
    loader = stream()
    orders = [torch.cat(epoch(loader, n)).flatten() for n in (0, 1, 0)]
    everything = torch.cat([columns(g)[0] for g in GROUPS], dim=1).flatten()
    assert sorted(orders[0].tolist()) == sorted(everything.tolist())
    assert not torch.equal(orders[0], orders[1]) and torch.equal(orders[0], orders[2])
    assert not torch.equal(torch.cat(epoch(stream(seed=1), 0)).flatten(), orders[0])
    for x, y in stream():
        assert torch.equal(y, 2 * x)  # inputs and targets stay paired


def test_rows_are_shuffled_within_windows_of_whole_row_groups():
    order = torch.cat(epoch(stream(), 0)).flatten()
    groups = (order // 100).long()
    first_window = set(groups[:20].tolist())  # the window holds whole groups: at least 20 rows
    assert sum(SIZES[g] for g in first_window) >= 20
    assert groups[:20].tolist() != sorted(groups[:20].tolist())  # rows of its groups are interleaved
    in_order = torch.cat(epoch(stream(shuffle=False), 0)).flatten()
    assert torch.equal(in_order, torch.cat([columns(g)[0] for g in GROUPS], dim=1).flatten())


def test_a_slow_training_step_never_sees_rows_of_a_buffer_the_reader_has_refilled():
    # The reader fills its join buffers in turn, far faster than these steps take their batches: a buffer
    # refilled while batches were still gathered from it would repeat some rows and lose others.
    loader, seen = stream(buffer_rows=10), []
    for x, y in loader:
        time.sleep(0.01)
        seen.append(x)
        assert torch.equal(y, 2 * x)
    assert sorted(torch.cat(seen).flatten().tolist()) == sorted(
        torch.cat([columns(g)[0] for g in GROUPS], 1).flatten().tolist()
    )


def test_epochs_read_on_by_one_reader_are_those_a_fresh_reader_gives_even_under_slow_steps():
    # The reader goes from an epoch's last window to the next epoch's first, in the join buffers it rotates:
    # the next epoch's rows must not land in the buffer the last batches are still gathered from.
    # Lightning asks for no batch past an epoch's last, so the reader is handed on before the last is given.
    loader, chained = stream(buffer_rows=10), []
    for n in range(3):
        loader.sampler.set_epoch(n)
        batches = iter(loader)
        chained.append([])
        for _ in range(len(loader)):
            time.sleep(0.002)
            chained[-1].append(next(batches)[0])
        del batches
    assert loader._ahead[0] == 3  # one reader read all three epochs and goes on
    for n, batches in enumerate(chained):
        fresh = epoch(stream(buffer_rows=10), n)
        assert len(batches) == len(fresh) and all(torch.equal(a, b) for a, b in zip(batches, fresh, strict=True))


def test_a_shuffled_epoch_trains_on_one_core_fewer_leaving_one_to_the_reader():
    before = torch.get_num_threads()
    torch.set_num_threads(3)
    try:
        in_loop, nested, loader = [], [], stream()
        batches = iter(loader)
        for _ in range(len(loader)):  # as Lightning takes them: none asked for past the last
            next(batches)
            in_loop.append(torch.get_num_threads())
            if not nested:  # a stream iterated inside the epoch (validation) leaves the count alone
                nested = [len(list(stream(shuffle=False))), len(list(stream())), torch.get_num_threads()]
        # Given back before the last batch is handed out: Lightning never resumes the iterator after it.
        assert in_loop == [2] * 14 + [3] and nested == [15, 15, 2]
        del batches
        assert torch.get_num_threads() == 3
        full_batch = []
        for _ in stream(batch_size=None, shuffle=False):  # keeps every core: bit for bit as in memory
            full_batch.append(torch.get_num_threads())
        assert full_batch == [3]
    finally:
        torch.set_num_threads(before)


def test_a_training_stream_cuts_the_batches_every_rank_agrees_on_and_resumes_mid_epoch():
    loader = stream(n_batches=20)
    batches = epoch(loader, 3)
    assert len(loader) == len(batches) == 20 and {len(b) for b in batches} <= {5, 6}
    resumed = stream(n_batches=20)
    resumed.load_state_dict({"epoch": 3, "batches": 12})
    rest = epoch(resumed, 3)
    assert len(rest) == 8 and all(torch.equal(a, b) for a, b in zip(batches[12:], rest, strict=True))
    assert resumed.state_dict() == {"epoch": 3, "batches": 20}


def test_a_read_error_in_the_background_is_raised_in_the_loop_and_the_reader_stops():
    def failing(group: int):
        if group == 4:
            raise ValueError("bad cell in group 4")
        return read(group)

    loader = RowGroupStream(failing, GROUPS, sum(SIZES), batch_size=8)
    with pytest.raises(ValueError, match="bad cell in group 4"):
        list(loader)
    before = threading.active_count()
    next(iter(stream()))  # an epoch abandoned after one batch ...
    assert threading.active_count() <= before  # ... leaves no reader thread behind


def test_the_next_epoch_is_read_ahead_and_a_process_ending_with_it_in_flight_exits_cleanly():
    loader = stream()
    loader.sampler.set_epoch(0)
    assert len(list(loader)) == 15 and loader._ahead is not None and loader._ahead[0] == 1  # read while epoch 0 ends
    ahead = loader._ahead[1]
    loader.sampler.set_epoch(1)
    assert sorted(torch.cat([x for x, _ in loader]).flatten().tolist()) == sorted(
        torch.cat([columns(g)[0] for g in GROUPS], dim=1).flatten().tolist()
    )
    assert loader._ahead == (2, ahead) and not ahead.stop.is_set()  # the same reader goes on to epoch 2 ...
    loader.sampler.set_epoch(5)  # ... not the epoch asked for: that reader is stopped, and this one read afresh
    assert len(list(loader)) == 15 and ahead.stop.is_set() and loader._ahead[0] == 6
    # The last epoch's reader is still reading when the process ends: it is stopped at exit, not killed inside
    # torch (which aborts the process with "terminate called without an active exception").
    code = (
        "import torch\n"
        "from lit_linreg.data.stream import RowGroupStream\n"
        "def read(g):\n"
        "    torch.linalg.inv(torch.randn(1500, 1500) + 1500 * torch.eye(1500))  # seconds of C++ per group\n"
        "    return (torch.full((1, 5), float(g)),), None\n"
        "loader = RowGroupStream(read, list(range(4)), 20, batch_size=5, shuffle=True, buffer_rows=5)\n"
        "print(len(list(loader)))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert (done.returncode, done.stdout.strip(), "terminate" in done.stderr) == (0, "4", False), done.stderr


# --- Streaming a Parquet table through the CLI ----------------------------------------------------------------
def parquet_table(directory, n_rows: int = 20_000, rows_per_group: int = 1000, n_features: int = 6):
    """A generated regression table as a Parquet directory of 4 files, `rows_per_group` rows per row group."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    rng = np.random.default_rng(0)
    x = rng.normal(size=(n_rows, n_features)) * rng.uniform(0.5, 20, size=n_features) + rng.normal(size=n_features)
    y = x @ rng.normal(size=n_features) + 3.0 + rng.normal(scale=5.0, size=n_rows)  # R² about 0.9
    columns = {f"x{j}": x[:, j] for j in range(n_features)} | {"y": y}
    directory.mkdir()
    for i, rows in enumerate(np.array_split(np.arange(n_rows), 4)):
        part = pa.table({name: values[rows] for name, values in columns.items()})
        pq.write_table(part, directory / f"part-{i}.parquet", row_group_size=rows_per_group)
    return directory


def streamed_fit(table, *extra: str) -> list[str]:
    args = ["--data.path", str(table), "--data.targets", "[y]", "--data.batch_size", "500", "--model.lr", "0.05"]
    never_stop = ("--reference.stop_at_relative_gap", "null")
    return ["fit", "--config", config("table.yaml"), *args, *never_stop, "--trainer.max_epochs", "4", *extra]


def final_weights(root):
    checkpoint = torch.load(find_last(root), weights_only=True)
    momentum = {f"m/{k}": v["momentum_buffer"] for k, v in checkpoint["optimizer_states"][0]["state"].items()}
    return checkpoint["epoch"], checkpoint["state_dict"] | momentum


def test_a_streamed_fit_leaves_no_reader_running_after_it_even_reloading_its_loaders(run_cli, tmp_path):
    # A shuffled stream's reader reads the next epoch ahead; the DataModule stops it at teardown, and stops the
    # last loader's when Lightning asks for a new one, so that no thread holds the Trainer and two buffers.
    def readers() -> int:
        return sum(t.name == "lit-linreg-read-ahead" and t.is_alive() for t in threading.enumerate())

    table = parquet_table(tmp_path / "pq")
    before = readers()
    streaming = streamed_fit(table, "--data.in_memory", "false", "--trainer.reload_dataloaders_every_n_epochs", "1")
    assert run_cli(*streaming, root=tmp_path) == 0
    assert readers() == before


@pytest.mark.parametrize("precondition", ["qr", "none"])
@pytest.mark.parametrize("table", ["generated", "houses", "houses-mean", "houses-categorical"])
def test_a_streamed_full_batch_takes_the_step_the_rows_in_memory_take(
    run_cli, tmp_path, table, precondition, monkeypatch
):
    # The streamed full batch is read in blocks (of 448 values here: 64 rows of the generated table, 16,000 training
    # rows in row groups of 1,000) whose gradients add up: the same step as the batch in memory, to float32's rounding.
    monkeypatch.setattr(streamed_table, "BLOCK_VALUES", 64 * 7)
    if table.startswith("houses"):  # text columns and empty cells, in row groups of 25
        path, target = tmp_path / "table", "price_k"
        assert convert_main([str(ROOT / "data" / "houses.csv"), str(path), "--rows-per-group", "25"]) == 0
    else:
        path, target = parquet_table(tmp_path / "table"), "y"
    options = {
        "houses-mean": ["--data.missing", "mean"],
        "houses-categorical": ["--data.categorical", "[neighbourhood]"],
    }
    full_batch = ["--data.path", str(path), "--data.targets", f"[{target}]", "--trainer.max_epochs", "3"]
    full_batch += [*options.get(table, []), "--model.precondition", precondition, "--trainer.logger", "false"]
    results = []
    for in_memory in ("true", "false"):
        root = tmp_path / in_memory
        assert (
            run_cli("fit", "--config", config("table.yaml"), *full_batch, "--data.in_memory", in_memory, root=root) == 0
        )
        results.append(final_weights(root)[1])
    assert results[0].keys() == results[1].keys()
    for key, weight in results[0].items():  # weights of order 1, in standardized units: float32 resolves 1e-7
        torch.testing.assert_close(results[1][key], weight, rtol=1e-5, atol=2e-6, msg=lambda m, key=key: f"{key}: {m}")


def test_a_streamed_full_batch_holds_one_block_of_rows_at_a_time(run_cli, tmp_path, monkeypatch):
    # Each block the full batch reads must be let go (its rows, its forward and backward) before the next is
    # gathered: by the model that trains on it, and by the stream that reads it. A weak reference tells.
    monkeypatch.setattr(streamed_table, "BLOCK_VALUES", 64 * 7)  # 64 rows of the table's 7 columns
    read_blocks = StreamedBatch.__iter__
    earlier, alive = [], []

    def watched(batch):
        for block in read_blocks(batch):
            alive.append(sum(ref() is not None for ref in earlier))  # blocks still held as this one is read
            earlier.extend(weakref.ref(t) for t in block)
            yield block
            del block

    monkeypatch.setattr(StreamedBatch, "__iter__", watched)
    table = parquet_table(tmp_path / "table", n_rows=4000, rows_per_group=500)
    full_batch = ["--data.path", str(table), "--data.targets", "[y]", "--data.in_memory", "false"]
    assert run_cli("fit", "--config", config("table.yaml"), *full_batch, "--trainer.max_epochs", "2") == 0
    assert len(alive) > 2 * 45 and max(alive) == 0  # about 3,200 training rows an epoch, in blocks of 64


@pytest.mark.slow  # a run killed, then resumed, each a process of its own
def test_a_stream_killed_mid_epoch_resumes_to_bit_identical_weights(run_cli, run_process, tmp_path):
    table = parquet_table(tmp_path / "table")
    streaming = streamed_fit(table, "--data.in_memory", "false", "--data.shuffle_buffer", "3000")
    momentum = ("--model.momentum", "0.9", "--model.lr", "0.01", "--last.every_n_train_steps", "4")
    assert run_cli(*streaming, *momentum, root=tmp_path / "whole") == 0
    epoch, uninterrupted = final_weights(tmp_path / "whole")
    assert epoch == 3

    kill = ("--trainer.callbacks+", "tests.faults.KillInBatch", "--trainer.callbacks.epoch", "2")
    killed = run_process(*streaming, *momentum, *kill, "--trainer.callbacks.batch", "17", root=tmp_path / "killed")
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    record_fault("kills")
    checkpoint = load_checkpoint(find_last(tmp_path / "killed"))
    assert checkpoint["loops"]["fit_loop"]["state_dict"]["combined_loader"] == [{"epoch": 2, "batches": 16}]
    assert run_cli(*streaming, *momentum, "--ckpt_path", "last", root=tmp_path / "killed") == 0
    epoch, resumed = final_weights(tmp_path / "killed")
    record_fault("lost", sum(not torch.equal(resumed[k], uninterrupted[k]) for k in uninterrupted))
    assert epoch == 3 and all(torch.equal(resumed[k], uninterrupted[k]) for k in uninterrupted)


def test_in_memory_null_streams_only_a_parquet_table_too_large_for_memory(tmp_path, monkeypatch):
    from lit_linreg import TableDataModule

    table = parquet_table(tmp_path / "table", n_rows=2000, rows_per_group=500)
    assert TableDataModule(str(table), targets=["y"])._streams("fit") is False  # 2,000 x 7 values fit
    monkeypatch.setattr(TableDataModule, "MEMORY_SHARE", 1e-9)  # as if memory were almost full
    dm = TableDataModule(str(table), targets=["y"])
    assert dm._streams("fit") is True and dm._streams("predict") is True  # the validation rows, as fit has them
    own_file = TableDataModule(str(table), targets=["y"], predict_path=str(table))
    assert own_file._streams("predict") is False  # a predict file is read a block at a time (predict_rows.py)
    dm.setup("fit")
    assert dm.train_dataloader().__class__.__name__ == "RowGroupStream"
    assert TableDataModule(str(ROOT / "data" / "houses.csv"), targets=["price_k"])._streams("fit") is False  # CSV


def test_streaming_a_csv_file_is_refused_naming_the_conversion(run_cli, tmp_path, capsys):
    houses = str(ROOT / "data" / "houses.csv")
    assert run_cli("fit", "--config", config("table.yaml"), "--data.path", houses, "--data.in_memory", "false") == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "streams Parquet row groups" in err and "python -m lit_linreg.tables.convert" in err
    record_fault("bad_inputs")


@pytest.mark.slow  # two processes, each importing Lightning: about 16 s
@pytest.mark.parametrize("in_memory", ["true", "false"], ids=["memory", "stream"])
def test_two_gloo_processes_each_reading_half_a_parquet_table_reach_the_single_process_gap(
    run_cli, run_process, tmp_path, in_memory
):
    table = parquet_table(tmp_path / "table")
    full_batch = ["--data.path", str(table), "--data.targets", "[y]", "--data.in_memory", in_memory]
    assert run_cli("fit", "--config", config("table.yaml"), *full_batch, root=tmp_path / "single") == 0
    ddp = ["--trainer.strategy", "ddp", "--trainer.devices", "2", "--trainer.accelerator", "cpu"]
    done = run_process("fit", "--config", config("table.yaml"), *full_batch, *ddp, root=tmp_path / "ddp", timeout=240)
    assert done.returncode == 0, done.stderr[-2000:]

    def final(root, tag):
        return scalars(latest_version(root))[tag][-1][1]

    single, two = (final(tmp_path / r, "optimum/loss") for r in ("single", "ddp"))
    assert two == pytest.approx(single, rel=1e-9)  # one optimum: the ranks' statistics cover every row once
    gaps = [final(tmp_path / r, "optimum/loss_gap") for r in ("single", "ddp")]
    assert gaps[0] <= 1e-3 * single and abs(gaps[1] - gaps[0]) <= 0.01 * single


def test_a_shuffle_buffer_larger_than_the_table_makes_no_buffer_larger_than_its_rows():
    loader = stream(buffer_rows=10**12)  # 4 TB of buffer, were it made that large: no allocator gives that
    rows = torch.cat(epoch(loader, 0)).flatten()
    assert sorted(rows.tolist()) == sorted(torch.cat([columns(g)[0].flatten() for g in GROUPS]).tolist())


def small_parquet(directory, columns: dict, rows_per_group: int = 10) -> str:
    import pyarrow as pa
    import pyarrow.parquet as pq

    directory.mkdir()
    pq.write_table(pa.table(columns), directory / "part-0.parquet", row_group_size=rows_per_group)
    return str(directory)


def line_table(directory) -> str:
    """40 rows of y = 2x as a one-file Parquet directory of 10-row groups."""
    return small_parquet(directory, {"x": [float(i) for i in range(40)], "y": [2.0 * i for i in range(40)]})


def refused(run_cli, capsys, args: list[str]) -> str:
    """The one-line error of a fit that must be refused with exit 2."""
    capsys.readouterr()
    code = run_cli("fit", "--config", config("table.yaml"), "--data.targets", "[y]", *args)
    err = capsys.readouterr().err.strip()
    assert code == 2 and "Traceback" not in err, err
    assert err.splitlines()[-1].startswith("lit-linreg: error: "), err  # an info line (rows dropped) may come first
    record_fault("bad_inputs")
    return err.splitlines()[-1]


@pytest.mark.parametrize("in_memory", ["true", "false"], ids=["memory", "stream"])
def test_a_table_whose_rows_all_drop_or_whose_splits_are_too_small_is_refused_alike(
    run_cli, tmp_path, capsys, in_memory
):
    nulls = small_parquet(tmp_path / "nulls", {"x": [None] * 40, "y": [float(i) for i in range(40)]})
    tiny = small_parquet(tmp_path / "tiny", {"x": [1.0, 2.0, 3.0], "y": [2.0, 4.0, 6.0]})
    mode = ["--data.in_memory", in_memory, "--data.batch_size", "1"]
    assert "0 data rows are too few" in refused(run_cli, capsys, ["--data.path", nulls, *mode])
    assert "3 data rows are too few" in refused(run_cli, capsys, ["--data.path", tiny, *mode])
    filled = refused(run_cli, capsys, ["--data.path", nulls, *mode, "--data.missing", "mean"])  # nothing to fill x
    assert "feature 'x' has no value in any training row" in filled


@pytest.mark.parametrize("in_memory", ["true", "false"], ids=["memory", "stream"])
def test_integers_beyond_2_to_the_53_train_as_the_nearest_float(run_cli, tmp_path, in_memory):
    import pyarrow as pa

    big = [2**63 + 4096 * i + 1 for i in range(60)]  # uint64, not exactly float64: a checked cast refuses them
    path = small_parquet(tmp_path / "big", {"x": pa.array(big, pa.uint64()), "y": [float(i) for i in range(60)]})
    args = ["--data.path", path, "--data.targets", "[y]", "--data.in_memory", in_memory, "--trainer.max_epochs", "2"]
    assert run_cli("fit", "--config", config("table.yaml"), *args) == 0


def test_a_file_in_a_parquet_directory_that_is_not_parquet_is_named(run_cli, tmp_path, capsys):
    path = line_table(tmp_path / "pq")
    (tmp_path / "pq" / "README.txt").write_text("the sales table, 2026\n")
    err = refused(run_cli, capsys, ["--data.path", path, "--data.in_memory", "false"])
    assert f"{tmp_path / 'pq' / 'README.txt'}: not a readable Parquet file" in err


def test_convert_refuses_a_target_inside_its_source_and_leaves_nothing_of_a_failed_run(tmp_path, capsys):
    source = line_table(tmp_path / "pq")
    assert convert_main([source, str(tmp_path / "pq" / "copy")]) == 2  # its files would be read as the table's
    assert "is inside" in capsys.readouterr().err and not (tmp_path / "pq" / "copy").exists()
    part = tmp_path / "pq" / "part-0.parquet"
    data = bytearray(part.read_bytes())
    data[4:200] = bytes(196)  # the first data page's header, zeroed: the footer still reads
    part.write_bytes(bytes(data))
    assert convert_main([source, str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and err.startswith("lit-linreg: error: "), err
    assert not (tmp_path / "out").exists()  # so that the same command runs once the source is fixed


def test_resuming_names_a_parquet_directory_however_it_is_spelled(run_cli, tmp_path):
    path = line_table(tmp_path / "pq")
    args = ["fit", "--config", config("table.yaml"), "--data.targets", "[y]", "--trainer.max_epochs"]
    assert run_cli(*args, "2", "--data.path", path) == 0
    assert run_cli(*args, "3", "--data.path", path + "/", "--ckpt_path", "last") == 0


def test_a_divergence_under_lr_auto_says_what_auto_chose_and_what_to_change(run_cli, tmp_path, capsys):
    table = parquet_table(tmp_path / "pq", n_rows=2000, rows_per_group=500)
    args = ["--data.path", str(table), "--data.batch_size", "1", "--trainer.max_epochs", "1"]
    capsys.readouterr()
    assert run_cli("fit", "--config", config("table.yaml"), "--data.targets", "[y]", *args) == 1  # a run that failed
    err = capsys.readouterr().err.strip().splitlines()[-1]  # lr auto suits the full batch; single rows are noisier
    assert err.startswith("lit-linreg: error: the training loss became inf"), err
    assert "lr auto chose" in err and "--data.batch_size" in err and "use --model.lr auto" not in err


def test_a_resume_past_the_end_of_this_data_s_epoch_is_refused_not_replayed_silently():
    loader = stream()  # 15 batches an epoch
    with pytest.raises(DataError, match="saved 150 batches into an epoch that now has 15"):
        loader.load_state_dict({"epoch": 0, "batches": 150})  # saved mid-epoch on a table 10 times as long


def test_a_broken_link_in_a_parquet_directory_is_named_not_skipped(run_cli, tmp_path, capsys):
    path = line_table(tmp_path / "pq")
    (tmp_path / "pq" / "part-1.parquet").symlink_to(tmp_path / "moved" / "part-1.parquet")
    err = refused(run_cli, capsys, ["--data.path", path])
    assert f"{tmp_path / 'pq' / 'part-1.parquet'}: a link to" in err and "which does not exist" in err
