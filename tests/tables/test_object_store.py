"""Tables in an object store, read from a real S3-compatible server on a loopback port (see conftest.py)."""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import time
import uuid

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from lit_linreg import TableDataModule
from lit_linreg.cli.checkpoint import find_last
from lit_linreg.data.streamed_table import StreamedTable
from lit_linreg.errors import ConfigError, DataError
from tests.conftest import QUIET, ROOT, config, record_fault


def regression_table(directory, n_rows: int = 16_000, rows_per_group: int = 1000, files: int = 4):
    """A generated regression table as a Parquet directory of `files` files (x0..x5, y)."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(n_rows, 6)) * rng.uniform(0.5, 20, size=6)
    y = x @ rng.normal(size=6) + 3.0 + rng.normal(scale=5.0, size=n_rows)
    columns = {f"x{j}": x[:, j] for j in range(6)} | {"y": y}
    directory.mkdir()
    for i, rows in enumerate(np.array_split(np.arange(n_rows), files)):
        part = pa.table({name: values[rows] for name, values in columns.items()})
        pq.write_table(part, directory / f"part-{i}.parquet", row_group_size=rows_per_group)
    return directory


def bucket_name() -> str:
    return f"t-{uuid.uuid4().hex[:12]}"


def refused(run_cli, capsys, args: list[str]) -> str:
    """The one-line error of a fit that must be refused with exit 2."""
    capsys.readouterr()
    code = run_cli("fit", "--config", config("table.yaml"), "--data.targets", "[y]", *args)
    err = capsys.readouterr().err.strip()
    assert code == 2 and "Traceback" not in err, err
    assert err.splitlines()[-1].startswith("lit-linreg: error: "), err
    record_fault("bad_inputs")
    return err.splitlines()[-1]


def weights(root):
    return torch.load(find_last(root), weights_only=True)["state_dict"]


# --- The same answer from a bucket as from disk ----------------------------------------------------------------------
def test_a_table_in_a_bucket_loads_the_bit_identical_rows_of_the_same_table_on_disk_in_memory_and_streamed(
    store, tmp_path
):
    local = regression_table(tmp_path / "table", n_rows=8000)
    url = store.upload(local, bucket_name(), "sales/table/")
    on_disk, in_bucket = (TableDataModule(str(path), targets=["y"], seed=3) for path in (local, url))
    for split, tensors in on_disk.load("fit").items():
        assert all(torch.equal(a, b) for a, b in zip(tensors, in_bucket.load("fit")[split], strict=True)), split
    streams = [
        StreamedTable(dm._table(dm.path), dm._reader(), 3, dm._fractions, 0, 1, 1000) for dm in (on_disk, in_bucket)
    ]
    for streamed in streams:
        streamed.count()
    assert np.array_equal(*(s.counts for s in streams))
    for a, b in zip(*(s.groups for s in streams), strict=True):
        (xa, ya), _ = streams[0].split_rows(a, 0)
        (xb, yb), _ = streams[1].split_rows(b, 0)
        assert torch.equal(xa, xb) and torch.equal(ya, yb)


@pytest.mark.slow
@pytest.mark.parametrize("in_memory", ["true", "false"], ids=["memory", "stream"])
def test_a_table_in_a_bucket_fits_to_the_bit_identical_weights_of_the_same_table_on_disk(
    store, run_cli, tmp_path, in_memory
):
    local = regression_table(tmp_path / "table")
    url = store.upload(local, bucket_name(), "sales/table/")
    fit = ["--config", config("table.yaml"), "--data.targets", "[y]", "--data.in_memory", in_memory]
    fit += ["--data.batch_size", "2000", "--trainer.max_epochs", "3"]
    assert run_cli("fit", *fit, "--data.path", str(local), root=tmp_path / "disk") == 0
    assert run_cli("fit", *fit, "--data.path", url, root=tmp_path / "bucket") == 0
    on_disk, in_bucket = weights(tmp_path / "disk"), weights(tmp_path / "bucket")
    assert on_disk.keys() == in_bucket.keys()
    assert all(torch.equal(on_disk[k], in_bucket[k]) for k in on_disk)
    assert store.requests_for(url.removeprefix("s3://").split("/")[0])  # read from the store, not from a cache


def test_the_endpoint_and_region_come_from_storage_options_and_credentials_never_do(store, run_cli, tmp_path, capsys):
    url = store.upload(regression_table(tmp_path / "table", n_rows=4000), bucket_name(), "t")
    with pytest.MonkeyPatch.context() as env:
        env.delenv("AWS_ENDPOINT_URL")
        options = {"endpoint": store.endpoint, "region": "eu-west-1"}
        assert len(TableDataModule(url, targets=["y"], storage_options=options).load("fit")["train"][0]) > 3000
    with pytest.raises(ConfigError, match=r"takes endpoint and region, not secret_key: credentials come from"):
        TableDataModule(url, targets=["y"], storage_options={"secret_key": "s"})
    err = refused(run_cli, capsys, ["--data.path", f"{url}?access_key=a&secret_key=s"])
    assert "a URL with a query (?...) is refused" in err and "secret" not in err
    with pytest.raises(ConfigError, match=r"^gs://b/t: data.storage_options region applies to s3:// tables, not to gs"):
        TableDataModule("gs://b/t", targets=["y"], storage_options={"region": "eu-west-1"})


def test_a_scheme_read_through_fsspec_names_the_package_it_needs_or_says_none_reads_it():
    pytest.importorskip("fsspec")  # Lightning's dependency
    try:
        import adlfs  # noqa: F401
    except ImportError:
        with pytest.raises(DataError, match=r"^az://c/t: reading az:// needs fsspec's package for it \(Install adlfs"):
            TableDataModule("az://c/t", targets=["y"])
    with pytest.raises(
        DataError, match=r"^nosuch://c/t: no filesystem reads nosuch:// here \(pyarrow's nor fsspec's\)$"
    ):
        TableDataModule("nosuch://c/t", targets=["y"])


# --- Each rank fetches only its own row groups ------------------------------------------------------------------------
def group_ranges(local_file) -> list[tuple[int, int]]:
    """The byte range [start, end) of each row group's column chunks in a local Parquet file."""
    metadata = pq.ParquetFile(local_file).metadata
    ranges = []
    for g in range(metadata.num_row_groups):
        chunks = [metadata.row_group(g).column(c) for c in range(metadata.num_columns)]
        starts = [c.dictionary_page_offset if c.has_dictionary_page else c.data_page_offset for c in chunks]
        ranges.append((min(starts), max(s + c.total_compressed_size for s, c in zip(starts, chunks, strict=True))))
    return ranges


def fetched(store, key: str, size: int) -> list[tuple[int, int]]:
    """The byte ranges [start, end) of object `key` that GET requests fetched, but those ending at its end (footers)."""
    ranges = []
    for request in store.requests_for(key):
        start, end = map(int, re.fullmatch(r"bytes=(\d+)-(\d+)", request.range).groups())
        if end + 1 < size:
            ranges.append((start, end + 1))
    return ranges


@pytest.mark.parametrize("streamed", [False, True], ids=["memory", "stream"])
def test_two_ranks_each_fetch_only_their_own_row_groups_from_the_bucket(store, tmp_path, streamed):
    local = regression_table(tmp_path / "table", n_rows=32_000, rows_per_group=2000, files=2)
    bucket = bucket_name()
    url = store.upload(local, bucket, "t")
    files = sorted(local.glob("*.parquet"))
    groups = {f.name: group_ranges(f) for f in files}  # 8 row groups a file, 16 in all: 8 a rank
    mine = {}
    for rank in (0, 1):
        dm = TableDataModule(url, targets=["y"], val_fraction=0.25, seed=1)
        table = dm._table(url)
        share = table.share(rank, 2).groups
        store.served.clear()
        if streamed:
            streamed_table = StreamedTable(table, dm._reader(), dm.seed, dm._fractions, rank, 2, 1000)
            streamed_table.count()
            for group in streamed_table.groups:
                streamed_table.split_rows(group, 0)
        else:
            dm.load_share("fit", rank, 2)
        mine[rank] = {(g.file.rsplit("/", 1)[1], g.index) for g in share}
        for f in files:
            ranges = fetched(store, f"{bucket}/t/{f.name}", f.stat().st_size)
            own = [groups[f.name][i] for name, i in mine[rank] if name == f.name]
            others = [r for i, r in enumerate(groups[f.name]) if (f.name, i) not in mine[rank]]
            assert all(any(s >= a and e <= b for a, b in own) for s, e in ranges), (rank, f.name, ranges, own)
            assert not any(s < b and a < e for s, e in ranges for a, b in others)
            assert all(any(s <= a and b <= e for s, e in ranges) for a, b in own)  # each own group fetched whole
    assert len(mine[0]) == len(mine[1]) == 8 and not mine[0] & mine[1]


@pytest.mark.slow
def test_two_gloo_processes_reading_their_halves_from_the_bucket_reach_the_weights_they_reach_from_disk(
    store, run_process, tmp_path
):
    local = regression_table(tmp_path / "table")
    bucket = bucket_name()
    url = store.upload(local, bucket, "t/")
    ddp = ["--trainer.strategy", "ddp", "--trainer.devices", "2", "--trainer.accelerator", "cpu"]
    fit = ["fit", "--config", config("table.yaml"), "--data.targets", "[y]", "--trainer.max_epochs", "3"]
    fetches = {}  # each row group's fetches, by the run: how many of its bytes' ranges were asked for
    for path, root, launch in ((str(local), "disk", ddp), (url, "bucket", ddp), (url, "single", [])):
        store.served.clear()
        done = run_process(*fit, *launch, "--data.path", path, root=tmp_path / root, timeout=240)
        assert done.returncode == 0, done.stderr[-2000:]
        fetches[root] = [
            sum(a <= s and e <= b for s, e in fetched(store, f"{bucket}/t/{f.name}", f.stat().st_size))
            for f in sorted(local.glob("*.parquet"))
            for a, b in group_ranges(f)
        ]
    on_disk, in_bucket = weights(tmp_path / "disk"), weights(tmp_path / "bucket")
    assert all(torch.equal(on_disk[k], in_bucket[k]) for k in on_disk)
    # Two ranks together fetch each row group as often as one process alone: each fetched only its own.
    assert fetches["bucket"] == fetches["single"] and min(fetches["single"]) >= 1, fetches


# --- One line for what the store answers -----------------------------------------------------------------------------
def test_a_missing_bucket_a_missing_prefix_and_an_unreachable_store_are_each_one_line(store, run_cli, tmp_path, capsys):
    url = store.upload(regression_table(tmp_path / "table", n_rows=4000), bucket_name(), "t")
    bucket = url.split("/")[2]
    assert refused(run_cli, capsys, ["--data.path", "s3://no-such-bucket-here/t/"]).endswith(
        "s3://no-such-bucket-here/t/: no such bucket 'no-such-bucket-here'"
    )
    with pytest.raises(DataError, match=rf"^s3://{bucket}/nothing/: no such file or prefix$"):
        TableDataModule(f"s3://{bucket}/nothing/", targets=["y"])
    with socket.socket() as sock:  # a loopback port nothing listens on
        sock.bind(("127.0.0.1", 0))
        dead = sock.getsockname()[1]
    started = time.monotonic()
    with pytest.raises(DataError) as refused_at:
        TableDataModule(url, targets=["y"], storage_options={"endpoint": f"http://127.0.0.1:{dead}"})
    err = str(refused_at.value)
    assert time.monotonic() - started < 15  # connections time out, and retry, briefly
    assert err.startswith(f"{url}: cannot reach the store (Failed to connect to 127.0.0.1:{dead}")
    assert "check the network, and the endpoint" in err


def test_access_denied_names_where_the_credentials_come_from_and_never_shows_them(store, run_cli, tmp_path, capsys):
    import boto3

    url = store.upload(regression_table(tmp_path / "table", n_rows=4000), bucket_name(), "t")
    iam = boto3.client("iam", endpoint_url=store.endpoint, region_name="us-east-1")
    user = f"reader-{uuid.uuid4().hex[:8]}"
    iam.create_user(UserName=user)  # a user with no policy: every read is denied
    key = iam.create_access_key(UserName=user)["AccessKey"]
    with pytest.MonkeyPatch.context() as env:
        env.setenv("AWS_ACCESS_KEY_ID", key["AccessKeyId"])
        env.setenv("AWS_SECRET_ACCESS_KEY", key["SecretAccessKey"])
        store.set_auth(enforced=True)
        try:
            err = refused(run_cli, capsys, ["--data.path", url])
        finally:
            store.set_auth(enforced=False)
    assert err.startswith(f"lit-linreg: error: {url}: access denied (ACCESS_DENIED during HeadObject operation)")
    assert err.endswith(
        "the credentials come from AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, AWS_PROFILE or ~/.aws/credentials"
    )
    assert key["AccessKeyId"] not in err and key["SecretAccessKey"] not in err


@pytest.mark.parametrize("streamed", [False, True], ids=["memory", "stream"])
def test_an_object_rewritten_during_the_run_is_refused_not_read_half_old_half_new(store, tmp_path, streamed):
    local = regression_table(tmp_path / "table", n_rows=8000)
    url = store.upload(local, bucket_name(), "t")
    dm = TableDataModule(url, targets=["y"])  # the footers read: each file's version recorded
    table = dm._table(url)
    streamed_table = StreamedTable(table, dm._reader(), dm.seed, dm._fractions, 0, 1, 1000) if streamed else None
    if streamed:
        streamed_table.count()
    fs = store.filesystem()
    part = f"{url.removeprefix('s3://')}/part-1.parquet"
    with fs.open_output_stream(part) as out:  # the same columns, other rows
        pq.write_table(pq.read_table(local / "part-1.parquet").slice(0, 1500), out, row_group_size=500)
    with pytest.raises(DataError, match=rf"^{url}/part-1.parquet: changed since this run first read it \(") as err:
        if streamed:
            for group in streamed_table.groups:
                streamed_table.split_rows(group, 0)
        else:
            dm.load("fit")
    sizes = (local / "part-1.parquet").stat().st_size, fs.get_file_info(part).size
    assert "size {} then {}".format(*sizes) in str(err.value) and "start again once it is written" in str(err.value)
    record_fault("bad_inputs")


# --- A CSV file in a bucket -------------------------------------------------------------------------------------------
def test_a_csv_file_in_a_bucket_is_read_once_and_converts_to_the_same_parquet_as_on_disk(store, tmp_path, capsys):
    from lit_linreg.tables.convert import main as convert_main

    local = tmp_path / "sales.csv"
    pq.read_table(regression_table(tmp_path / "table", n_rows=60_000)).to_pandas().to_csv(local, index=False)
    bucket = bucket_name()
    url = store.upload(local, bucket, "raw/sales.csv")
    store.served.clear()
    in_bucket = TableDataModule(url, targets=["y"]).load("fit")
    sent, size = sum(r.sent for r in store.requests_for(f"{bucket}/raw/")), local.stat().st_size
    # The whole file once, after its first 64 KiB (the delimiter) and MiB (the columns' kinds), read to sniff.
    assert size <= sent <= size + (1 << 20) + (1 << 16), (sent, size)
    on_disk = TableDataModule(str(local), targets=["y"]).load("fit")
    assert all(torch.equal(a, b) for split in on_disk for a, b in zip(on_disk[split], in_bucket[split], strict=True))
    assert convert_main([url, str(tmp_path / "from_bucket"), "--rows-per-group", "5000"]) == 0
    assert convert_main([str(local), str(tmp_path / "from_disk"), "--rows-per-group", "5000"]) == 0
    assert pq.read_table(tmp_path / "from_bucket").equals(pq.read_table(tmp_path / "from_disk"))
    capsys.readouterr()
    assert convert_main([url, f"s3://{bucket}/sales_parquet/"]) == 2
    assert "copy it to the bucket after (aws s3 cp --recursive DIR" in capsys.readouterr().err


# --- Runs are written to a file system -------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "flag", ["--trainer.default_root_dir", "--trainer.logger.init_args.save_dir", "--ckpt_path"], ids=lambda f: f[2:]
)
def test_a_run_directory_or_checkpoint_in_a_bucket_is_refused_in_one_line_saying_what_to_do(tmp_path, capsys, flag):
    from lit_linreg.cli.main import main

    args = ["fit", "--config", config("table.yaml"), "--trainer.default_root_dir", str(tmp_path / "runs")]
    if flag == "--trainer.logger.init_args.save_dir":
        args += ["--trainer.logger", "TensorBoardLogger"]
    assert main([*args, flag, "s3://bucket/runs/last.ckpt"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.splitlines() == [err] and "Traceback" not in err
    assert err.startswith(f"lit-linreg: error: {flag} s3://bucket/runs/last.ckpt: this project cannot")
    assert err.endswith("copy the run to the bucket after (aws s3 sync runs/ s3://bucket/runs/), or mount the bucket")
    assert not (tmp_path / "runs").exists()  # refused before any run directory is made
    record_fault("refusals")


# --- Streaming from a bucket holds memory flat ----------------------------------------------------------------------
# VmHWM, not ru_maxrss: the latter carries over the test process's own peak through fork and exec.
PEAK = """
import re, sys
import pyarrow as pa
from lit_linreg.cli.main import main
code = main(sys.argv[1:])
peak = int(re.search(r"VmHWM:\\s+(\\d+) kB", open("/proc/self/status").read())[1]) * 1024
print("PEAK", peak, pa.default_memory_pool().max_memory(), code)
"""


def peak_of_a_fit(store, tmp_path, n_rows: int, in_memory: str) -> tuple[int, int]:
    """Peak resident bytes and peak pyarrow bytes of a one-epoch fit of an `n_rows` table read from the bucket."""
    local = regression_table(tmp_path / f"table_{n_rows}", n_rows=n_rows, rows_per_group=10_000)
    url = store.upload(local, bucket_name(), "t")
    args = ["fit", "--config", config("table.yaml"), "--data.path", url, "--data.targets", "[y]"]
    args += ["--data.in_memory", in_memory, "--data.batch_size", "10000", "--data.shuffle_buffer", "20000"]
    args += ["--trainer.max_epochs", "1", "--trainer.default_root_dir", str(tmp_path / f"runs_{n_rows}"), *QUIET]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run([sys.executable, "-c", PEAK, *args], cwd=ROOT, env=env, capture_output=True, text=True)
    peak = re.search(r"PEAK (\d+) (\d+) 0", done.stdout)
    assert peak, done.stdout[-2000:] + done.stderr[-2000:]
    return int(peak[1]), int(peak[2])


@pytest.mark.slow
@pytest.mark.skipif(not os.path.exists("/proc/self/status"), reason="reads the peak resident set from /proc")
@pytest.mark.parametrize("in_memory", ["false", pytest.param("true", marks=pytest.mark.xfail(strict=True))])
def test_streaming_a_table_from_a_bucket_holds_memory_flat_however_many_its_rows(store, tmp_path, in_memory):
    # A table 4x as long: 600,000 rows more, 16.8 MB more as float32 tensors held in memory (the control, which
    # must fail); streamed, each rank holds two shuffle windows and one row group's fetched bytes, whatever the rows.
    # The statistics pass, the least-squares reference's passes and an epoch, each reading the row groups again.
    (rss_small, arrow_small), (rss_large, arrow_large) = (
        peak_of_a_fit(store, tmp_path, n, in_memory) for n in (200_000, 800_000)
    )
    more_rows_bytes = 600_000 * 7 * 4
    assert rss_large - rss_small < more_rows_bytes / 4, (rss_small, rss_large)
    assert arrow_large < 1.25 * arrow_small + (1 << 20), (arrow_small, arrow_large)
