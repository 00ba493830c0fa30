"""Every mistake a user can make ends in one line `lit-linreg: error: ...` on stderr and exit 2, never a traceback.

`test_bad_input_is_refused_in_one_line` runs one case per bad input (CSV files, configs and flags,
checkpoints) through `lit_linreg.cli.main.main` in this process and counts them for the fault report;
`test_refused_runs_leave_*` checks that refused runs leave every saved file byte-identical;
`test_random_csv_*` throws random CSV text at the reader and compares with an independent reading.
"""

from __future__ import annotations

import csv
import hashlib
import io
import os
import re
import shutil
import tempfile
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from lit_linreg.cli.checkpoint import find_last
from lit_linreg.cli.main import main
from lit_linreg.data.table_datamodule import TableDataModule
from lit_linreg.errors import UserError, find_user_error
from tests.conftest import QUIET, config, record_fault

CSV = ["--data.class_path", "lit_linreg.TableDataModule", "--data.init_args.targets", "[y]"]
TOY = ["--config", config("toy.yaml"), "--trainer.max_epochs", "2"]
GOOD_CSV = "x,y\n1,2\n2,4\n3,6\n4,8\n5,10\n6,12\n7,14\n8,16\n9,18\n10,20\n"


@pytest.fixture(scope="module")
def trained_root(tmp_path_factory) -> Path:
    """Run directory of a 2-epoch toy run (1 input, 1 output), shared by the module: copy from it, never write."""
    root = tmp_path_factory.mktemp("trained")
    assert main(["fit", *TOY, *QUIET, "--trainer.default_root_dir", str(root)]) == 0
    return root


@pytest.fixture(scope="module")
def trained(trained_root) -> Path:
    """last.ckpt of the shared toy run."""
    return find_last(trained_root)


# A case of the table: (setup, argv, expected). `setup(tmp, trained)` puts files into the test's tmp_path
# (`trained()` gives the shared toy last.ckpt, started only for the cases that call it); "{tmp}" in argv and
# in the expected fragments of the message stands for tmp_path.
Setup = Callable[[Path, Callable[[], Path]], None]


def write(name: str, content: str | bytes, *more: tuple[str, str | bytes]) -> Setup:
    """Write tmp/name (and each further (name, content) pair)."""

    def setup(tmp: Path, trained: Callable[[], Path]) -> None:
        for file, text in [(name, content), *more]:
            (tmp / file).write_bytes(text if isinstance(text, bytes) else text.encode())

    return setup


def mkdir(name: str) -> Setup:
    return lambda tmp, trained: (tmp / name).mkdir()


def torch_save(obj: object) -> Setup:
    """torch.save `obj` to tmp/evil.ckpt."""
    return lambda tmp, trained: torch.save(obj, tmp / "evil.ckpt")


def toy_checkpoint(edit: Callable[[bytes], bytes] = lambda data: data) -> Setup:
    """Copy the toy last.ckpt to tmp/toy.ckpt through `edit`."""
    return lambda tmp, trained: (tmp / "toy.ckpt").write_bytes(edit(trained().read_bytes()))


def chain(*setups: Setup) -> Setup:
    """Each setup in turn."""

    def setup(tmp: Path, trained: Callable[[], Path]) -> None:
        for one in setups:
            one(tmp, trained)

    return setup


def nothing(tmp: Path, trained: Callable[[], Path]) -> None:
    pass


def half(data: bytes) -> bytes:
    return data[: len(data) // 2]


class Payload:
    """A class torch.save pickles by reference: loading it would run code from this module."""


def payload_function() -> None:
    """A function torch.save pickles by reference."""


def lightning_like(state_dict: dict) -> dict:
    """The keys Lightning looks for first, around a state_dict of our choosing."""
    return {"state_dict": state_dict, "pytorch-lightning_version": "2.6.6", "epoch": 0, "global_step": 0}


FIT_CSV = ["fit", *CSV, "--data.init_args.path", "{tmp}/data.csv", "--trainer.max_epochs", "1"]
PREDICT_NEW_CSV = [  # the toy checkpoint's model takes column x and predicts y
    *["predict", *CSV, "--data.init_args.path", "{tmp}/data.csv", "--ckpt_path", "{tmp}/toy.ckpt"],
    *["--model.bias", "false"],
    "--data.init_args.predict_path",
]
CROP = ["--config", config("crop_yield.yaml")]

BAD_INPUTS = [
    # --- CSV files -------------------------------------------------------------------------------------------------
    pytest.param(nothing, FIT_CSV, ["{tmp}/data.csv: no such file"], id="csv-missing"),
    pytest.param(
        mkdir("data.csv"), FIT_CSV, ["{tmp}/data.csv: the directory holds no Parquet files"], id="csv-is-a-dir"
    ),
    pytest.param(
        write("data.csv", b"x,y\n1,2\n\xff\xfe,3\n4,5\n"),
        FIT_CSV,
        ["{tmp}/data.csv: row 3, column 'x' is not UTF-8 text (byte 0xff)"],
        id="csv-not-utf8",
    ),
    pytest.param(
        write("data.csv", b"\xffx,y\n1,2\n"),
        FIT_CSV,
        ["{tmp}/data.csv: the header is not UTF-8 text (byte 0xff)"],
        id="csv-header-not-utf8",
    ),
    pytest.param(write("data.csv", ""), FIT_CSV, ["{tmp}/data.csv: the file is empty"], id="csv-empty"),
    pytest.param(write("data.csv", "\nx,y\n1,2\n"), FIT_CSV, ["1 data rows are too few"], id="csv-blank-line-1"),
    pytest.param(write("data.csv", "x,y\n"), FIT_CSV, ["{tmp}/data.csv: no data rows below"], id="csv-header-only"),
    pytest.param(write("data.csv", "x,y\n\n\n"), FIT_CSV, ["{tmp}/data.csv: no data rows below"], id="csv-blank-rows"),
    pytest.param(
        write("data.csv", "x,y\n1,2\n3,abc\n4,8\n"),
        FIT_CSV,
        ["{tmp}/data.csv: row 3, column 'y': 'abc' is not a number"],
        id="csv-not-a-number",
    ),
    pytest.param(  # numpy's row numbers skip blank lines: the message must count them
        write("data.csv", "x,y\n1,2\n\n3,abc\n5,6\n"),
        FIT_CSV,
        ["{tmp}/data.csv: row 3, column 'y': 'abc' is not a number"],  # blank lines are not rows
        id="csv-not-a-number-after-a-blank-line",
    ),
    pytest.param(
        write("data.csv", "x,y\n1,2\n3,\n5,6\n"),
        [*FIT_CSV, "--data.init_args.missing", "error"],
        ["{tmp}/data.csv: row 3, column 'y' is empty or missing"],
        id="csv-empty-cell",
    ),
    pytest.param(
        write("data.csv", "x,y\n1,2\n3,nan\n"),
        [*FIT_CSV, "--data.init_args.missing", "error"],
        ["{tmp}/data.csv: row 3, column 'y' is empty or missing"],
        id="csv-nan",
    ),
    pytest.param(
        write("data.csv", "x,y\n1,2\n-inf,6\n"),
        FIT_CSV,
        ["{tmp}/data.csv: row 3, column 'x': -inf is not a finite number"],
        id="csv-inf",
    ),
    pytest.param(
        write("data.csv", "x,y\n1,2\n1e39,6\n"),
        FIT_CSV,
        ["{tmp}/data.csv: row 3, column 'x': 1e+39 is too large for float32"],
        id="csv-float32-overflow",
    ),
    pytest.param(
        write("data.csv", "x,y\n1,2\n3\n"),
        FIT_CSV,
        ["{tmp}/data.csv: row 3 has 1 fields, the header names 2"],
        id="csv-too-few-fields",
    ),
    pytest.param(
        write("data.csv", "x,y\n1,2\n3,6,9\n"),
        FIT_CSV,
        ["{tmp}/data.csv: row 3 has 3 fields, the header names 2"],
        id="csv-too-many-fields",
    ),
    pytest.param(  # every row too wide: numpy reads a consistent 3-column table, the header names 2
        write("data.csv", "x,y\n1,2,3\n4,5,6\n"),
        FIT_CSV,
        ["{tmp}/data.csv: row 2 has 3 fields, the header names 2"],
        id="csv-every-row-too-wide",
    ),
    pytest.param(
        write("data.csv", GOOD_CSV),
        [*FIT_CSV, "--data.init_args.targets", "[z]"],
        ["{tmp}/data.csv: no column 'z'; the columns are x, y"],
        id="csv-no-such-target",
    ),
    pytest.param(
        write("data.csv", GOOD_CSV),
        [*FIT_CSV, "--data.init_args.features", "[q]"],
        ["{tmp}/data.csv: no column 'q'; the columns are x, y"],
        id="csv-no-such-feature",
    ),
    pytest.param(
        write("data.csv", "x,y,x\n1,2,3\n"),
        FIT_CSV,
        ["{tmp}/data.csv: the header repeats the column name(s) 'x'"],
        id="csv-repeated-column",
    ),
    pytest.param(
        write("data.csv", "x,,y\n1,2,3\n"),
        FIT_CSV,
        ["{tmp}/data.csv: the header has an empty column name (column 2)"],
        id="csv-empty-column-name",
    ),
    pytest.param(
        write("data.csv", GOOD_CSV),
        [*FIT_CSV, "--data.init_args.targets", "[]"],
        ["data.targets must name at least one column"],
        id="csv-no-target",
    ),
    pytest.param(  # R2 needs 2 validation rows: 1 used to crash in torchmetrics
        write("data.csv", "x,y\n1,2\n2,4\n"),
        FIT_CSV,
        ["2 data rows are too few at val_fraction 0.2"],
        id="csv-too-few-rows",
    ),
    pytest.param(  # `columns.index` used to raise a bare ValueError
        chain(write("data.csv", GOOD_CSV, ("new.csv", "q\n1\n")), toy_checkpoint()),
        [*PREDICT_NEW_CSV, "{tmp}/new.csv"],
        ["{tmp}/new.csv: no column 'x'; the columns are q"],
        id="csv-predict-file-lacks-a-feature",
    ),
    pytest.param(
        chain(write("data.csv", GOOD_CSV, ("new.csv", "x\n1\nfive\n2\n")), toy_checkpoint()),
        [*PREDICT_NEW_CSV, "{tmp}/new.csv"],
        ["{tmp}/new.csv: row 3, column 'x': 'five' is not a number"],
        id="csv-predict-file-not-a-number",
    ),
    # --- configs and flags -----------------------------------------------------------------------------------------
    pytest.param(
        write("typo.yaml", "model:\n  lerning_rate: 0.1\n"),
        ["fit", *TOY, "--config", "{tmp}/typo.yaml"],
        ["does not accept option 'model.lerning_rate'"],
        id="config-key-typo",
    ),
    pytest.param(
        write("typo.yaml", "data:\n  class_path: lit_linreg.TableDataModule\n  init_args:\n    val_fracton: 0.1\n"),
        ["fit", "--config", "{tmp}/typo.yaml"],
        ["TableDataModule': Option 'val_fracton' is not accepted"],
        id="config-data-key-typo",
    ),
    pytest.param(
        nothing,
        ["fit", *TOY, "--model.lerning_rate", "0.1"],
        ["unrecognized arguments: --model.lerning_rate"],
        id="flag-typo",
    ),
    pytest.param(
        nothing, ["fit", *TOY, "--model.lr", "abc"], ['Parser key "model.lr"', "Given value: abc"], id="flag-lr-abc"
    ),
    pytest.param(
        write("data.csv", GOOD_CSV),
        [*FIT_CSV, "--data.init_args.batch_size", "ten"],
        ['Parser key "batch_size"', "Expected a <class 'int'>", "Given value: ten"],
        id="flag-batch-size-ten",
    ),
    pytest.param(
        nothing,
        ["fit", *TOY, "--trainer.max_epochs", "many"],
        ['Parser key "trainer.max_epochs"', "Given value: many"],
        id="flag-max-epochs-many",
    ),
    pytest.param(
        nothing,
        ["fit", "--data.class_path", "lit_linreg.NoSuchModule"],
        ["'lit_linreg.NoSuchModule'", "has no attribute 'NoSuchModule'"],
        id="flag-no-such-data-class",
    ),
    pytest.param(nothing, ["fit", *TOY, "--model.lr", "0"], ["model.lr must be > 0 or auto, got 0.0"], id="lr-zero"),
    pytest.param(
        nothing, ["fit", *TOY, "--model.lr", "-0.5"], ["model.lr must be > 0 or auto, got -0.5"], id="lr-negative"
    ),
    pytest.param(
        nothing,
        ["fit", *TOY, "--model.momentum", "1.5"],
        ["model.momentum must be in [0, 1) or auto, got 1.5"],
        id="momentum-1.5",
    ),
    pytest.param(
        nothing,
        ["fit", *TOY, "--model.momentum", "-0.1"],
        ["model.momentum must be in [0, 1) or auto, got -0.1"],
        id="momentum-negative",
    ),
    pytest.param(
        write("data.csv", GOOD_CSV),
        [*FIT_CSV, "--data.init_args.batch_size", "0"],
        ["data.batch_size must be at least 1 (or null for full batch), got 0"],
        id="batch-size-zero",
    ),
    pytest.param(
        write("data.csv", GOOD_CSV),
        [*FIT_CSV, "--data.init_args.val_fraction", "-0.1"],
        ["data.val_fraction must be in [0, 1), got -0.1"],
        id="val-fraction-negative",
    ),
    pytest.param(
        write("data.csv", GOOD_CSV),
        [*FIT_CSV, "--data.init_args.val_fraction", "1.0"],
        ["data.val_fraction must be in [0, 1), got 1.0"],
        id="val-fraction-one",
    ),
    pytest.param(
        nothing, ["fit", "--config", "{tmp}/nope.yaml"], ["File does not exist: '{tmp}/nope.yaml'"], id="config-missing"
    ),
    pytest.param(
        write("bad.yaml", "model: [\n"),
        ["fit", "--config", "{tmp}/bad.yaml"],
        ["Problems parsing config"],
        id="config-bad-yaml",
    ),
    pytest.param(  # e.g. a checkpoint given as --config: jsonargparse's UnicodeDecodeError used to escape
        write("model.ckpt", b"PK\x03\x04\xff\xfe"),
        ["fit", "--config", "{tmp}/model.ckpt"],
        ["a --config file is not UTF-8 text"],
        id="config-not-text",
    ),
    pytest.param(  # Lightning's MisconfigurationException used to escape with a traceback
        nothing,
        ["fit", *TOY, "--trainer.devices", "0"],
        ["trainer.devices must be at least 1, or -1 for every device, got 0"],
        id="trainer-devices-zero",
    ),
    # --- checkpoints -----------------------------------------------------------------------------------------------
    pytest.param(
        write("random.ckpt", bytes(range(256)) * 4),
        ["predict", *TOY, "--ckpt_path", "{tmp}/random.ckpt"],
        ["{tmp}/random.ckpt: not a PyTorch checkpoint"],
        id="ckpt-random-bytes",
    ),
    pytest.param(
        write("notes.ckpt", "hello world\n"),
        ["predict", *TOY, "--ckpt_path", "{tmp}/notes.ckpt"],
        ["{tmp}/notes.ckpt: not a PyTorch checkpoint"],
        id="ckpt-text",
    ),
    pytest.param(
        write("empty.ckpt", b""),
        ["predict", *TOY, "--ckpt_path", "{tmp}/empty.ckpt"],
        ["{tmp}/empty.ckpt: the file is empty"],
        id="ckpt-empty",
    ),
    pytest.param(
        toy_checkpoint(half),
        ["fit", *TOY, "--ckpt_path", "{tmp}/toy.ckpt"],
        ["{tmp}/toy.ckpt: not a readable checkpoint, or truncated", "failed finding central directory)"],
        id="ckpt-truncated",
    ),
    pytest.param(
        toy_checkpoint(),
        ["fit", *CROP, "--ckpt_path", "{tmp}/toy.ckpt"],
        [
            "{tmp}/toy.ckpt: trained on data of another shape: in_features 1 in the checkpoint, 3 in this data;"
            " out_features 1 in the checkpoint, 2 in this data"
        ],
        id="ckpt-other-shape-fit",
    ),
    pytest.param(
        toy_checkpoint(),
        ["predict", *CROP, "--ckpt_path", "{tmp}/toy.ckpt"],
        ["{tmp}/toy.ckpt: trained on data of another shape: in_features 1 in the checkpoint, 3 in this data"],
        id="ckpt-other-shape-predict",
    ),
    pytest.param(
        torch_save({"state_dict": {}, "payload": Payload()}),
        ["fit", *TOY, "--ckpt_path", "{tmp}/evil.ckpt"],
        ["{tmp}/evil.ckpt: refused: the file needs unsafe unpickling", "only from sources you trust"],
        id="ckpt-unsafe-class",
    ),
    pytest.param(
        torch_save({"state_dict": {}, "hook": payload_function}),
        ["predict", *TOY, "--ckpt_path", "{tmp}/evil.ckpt"],
        ["{tmp}/evil.ckpt: refused: the file needs unsafe unpickling"],
        id="ckpt-unsafe-function",
    ),
    pytest.param(
        torch_save({"state_dict": {}, "hook": os.system}),
        ["predict", *TOY, "--ckpt_path", "{tmp}/evil.ckpt"],
        ["{tmp}/evil.ckpt: refused: the file needs unsafe unpickling"],
        id="ckpt-unsafe-os-system",
    ),
    pytest.param(
        torch_save([1, 2, 3]),
        ["predict", *TOY, "--ckpt_path", "{tmp}/evil.ckpt"],
        ["{tmp}/evil.ckpt: not a Lightning checkpoint (no state_dict)"],
        id="ckpt-not-a-dict",
    ),
    pytest.param(  # a bare model.state_dict() wrapped by hand: Lightning used to fail with a KeyError
        torch_save({"state_dict": {"net.weight": torch.zeros(1, 1)}}),
        ["predict", *TOY, "--ckpt_path", "{tmp}/evil.ckpt"],
        ["{tmp}/evil.ckpt: not a checkpoint written by Lightning (no pytorch-lightning_version)"],
        id="ckpt-not-from-lightning",
    ),
    pytest.param(
        torch_save(lightning_like({"encoder.weight": torch.zeros(2, 2)})),
        ["predict", *TOY, "--ckpt_path", "{tmp}/evil.ckpt"],
        ["{tmp}/evil.ckpt: not a checkpoint of this network (its state_dict has none of net.weight)"],
        id="ckpt-other-model",
    ),
    pytest.param(
        nothing,
        ["predict", *TOY, "--ckpt_path", "{tmp}/nope.ckpt"],
        ["{tmp}/nope.ckpt: no such checkpoint file"],
        id="ckpt-missing",
    ),
    pytest.param(
        mkdir("dir.ckpt"),
        ["predict", *TOY, "--ckpt_path", "{tmp}/dir.ckpt"],
        ["{tmp}/dir.ckpt: is a directory, not a checkpoint file"],
        id="ckpt-is-a-dir",
    ),
    pytest.param(
        nothing,
        ["fit", *TOY, "--ckpt_path", "last"],
        ["--ckpt_path last: no last.ckpt under {tmp}/runs; run fit there first"],
        id="ckpt-last-without-checkpoint",
    ),
]


@pytest.mark.parametrize("setup, argv, expected", BAD_INPUTS)
def test_bad_input_is_refused_in_one_line(setup, argv, expected, tmp_path, capsys, request):
    setup(tmp_path, lambda: request.getfixturevalue("trained"))
    capsys.readouterr()

    args = [a.replace("{tmp}", str(tmp_path)) for a in argv]
    code = main([*args, *QUIET, "--trainer.default_root_dir", str(tmp_path / "runs")])

    err = capsys.readouterr().err
    assert code == 2, err
    assert "Traceback" not in err
    assert len(err.splitlines()) == 1 and err.startswith("lit-linreg: error: "), err
    for fragment in expected:
        assert fragment.replace("{tmp}", str(tmp_path)) in err
    # jsonargparse's dumps of what it tried (types, Namespace(...), NestedArg(...)) are filtered out
    assert not re.search(r"Subtypes:|Namespace\(|NestedArg\(|Given value type", err), err
    record_fault("bad_inputs")


def tree_digest(root: Path) -> dict[str, str]:
    """sha256 of every file under `root`, by relative path."""
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() for p in root.rglob("*") if p.is_file()
    }


def test_refused_runs_leave_every_saved_file_byte_identical(trained_root, tmp_path, capsys):
    # A run directory holding a finished toy run; then a series of refused runs into the same directory.
    root = tmp_path / "runs"
    shutil.copytree(trained_root, root)
    last = find_last(root)
    before = tree_digest(root)
    (tmp_path / "bad.csv").write_text("x,y\n1,2\n3,abc\n")
    (tmp_path / "cut.ckpt").write_bytes(half(last.read_bytes()))
    refused = [
        ["fit", "--config", config("crop_yield.yaml"), "--ckpt_path", "last"],  # other shape, found by "last"
        ["predict", "--config", config("crop_yield.yaml"), "--ckpt_path", str(last)],
        ["fit", *TOY, "--ckpt_path", str(tmp_path / "cut.ckpt")],
        ["fit", *CSV, "--data.init_args.path", str(tmp_path / "bad.csv"), "--ckpt_path", "last"],  # fails in setup
        ["fit", *TOY, "--model.lr", "abc", "--ckpt_path", "last"],
    ]
    for args in refused:
        assert main([*args, *QUIET, "--trainer.default_root_dir", str(root)]) == 2, args

    after = tree_digest(root)
    lost = [name for name, digest in before.items() if after.get(name) != digest]
    record_fault("lost", len(lost))
    assert lost == []
    assert find_last(root) == last  # no refused run wrote a newer last.ckpt that `--ckpt_path last` would pick
    assert capsys.readouterr().err.count("lit-linreg: error: ") == len(refused)
    assert main(["predict", *TOY, "--ckpt_path", "last", *QUIET, "--trainer.default_root_dir", str(root)]) == 0


def test_debug_mode_raises_instead_of_the_one_line(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("LIT_LINREG_DEBUG", "1")
    args = ["fit", *CSV, "--data.init_args.path", str(tmp_path / "nope.csv"), *QUIET]
    with pytest.raises(Exception) as raised:  # jsonargparse's ValueError, raised from our DataError
        main([*args, "--trainer.default_root_dir", str(tmp_path / "runs")])
    assert str(find_user_error(raised.value)) == f"{tmp_path}/nope.csv: no such file"
    assert "lit-linreg: error:" not in capsys.readouterr().err


def test_a_bad_model_flag_is_refused_even_with_a_checkpoint(trained, tmp_path, capsys):
    shutil.copyfile(trained, tmp_path / "toy.ckpt")
    args = ["fit", *TOY, "--trainer.max_epochs", "3", "--model.lr", "0", "--ckpt_path", str(tmp_path / "toy.ckpt")]
    assert main([*args, *QUIET, "--trainer.default_root_dir", str(tmp_path / "runs")]) == 2
    assert "model.lr must be > 0" in capsys.readouterr().err


@pytest.mark.slow
def test_python_m_lit_linreg_ends_with_the_error_line_and_no_traceback(run_process, tmp_path):
    (tmp_path / "bad.csv").write_text("x,y\n1,2\n3,abc\n5,6\n")  # y is mostly numbers: 'abc' is a bad cell
    done = run_process("fit", *CSV, "--data.init_args.path", str(tmp_path / "bad.csv"))
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 2
    assert "Traceback" not in done.stderr
    # Lightning's own info lines ("GPU available: ...") come first; the error is one line, and the last.
    assert lines[-1] == f"lit-linreg: error: {tmp_path}/bad.csv: row 3, column 'y': 'abc' is not a number"
    assert sum(line.startswith("lit-linreg:") for line in lines) == 1


# --- Random CSV text -------------------------------------------------------------------------------------------------
# The reader must either load exactly what an independent reading finds, or refuse with a one-line DataError that
# names the file and a bad row. The independent reading: Python's csv module for rows and fields, a regular
# expression for what a number is, the rules of the README for the rest: a column is text when most of its cells
# are not numbers; rows with a missing cell in a used column are dropped; an infinite value is refused.

NUMBER = re.compile(r"\s*[+-]?(?:(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]+)?|inf(?:inity)?|nan)\s*", re.IGNORECASE)
NULLS = {"", "NA", "nan", "NaN", "null"}  # among pyarrow's null markers

NAMES = ["x", "y", "z", "rain", "temp", "a b"]
numbers = st.one_of(  # cells that must load
    st.floats(width=32, allow_nan=False, allow_infinity=False).map(repr),
    st.floats(-1e30, 1e30).map(lambda v: f"{v:.6g}"),
    st.integers(-(10**9), 10**9).map(str),
    st.sampled_from(["-1e-50", " 3 ", "+.5", "5.", "1E5", "00012"]),
)
missing = st.sampled_from(["", "NA", "nan", " "])
not_finite = st.sampled_from(["-inf", "Infinity", "1e39", "-3.5e38", "1e400"])  # 1e39: finite, not in float32
words = st.sampled_from(["abc", "oops", "1_0", "1e", "- 1", ".", "x y", "\u0663"])


@st.composite
def csv_texts(draw) -> tuple[str, str]:
    """CSV text of 2-4 named columns and 1-6 rows, and the target to read; most hold some kind of mistake.

    Mistakes: repeated or empty column names, a target that is not a column, rows too short or too long, cells
    that are missing, words, or not finite. Blank lines, \\r\\n line ends and no last newline are fine.
    """
    mistake = draw(st.sampled_from([None, "cells", "width", "header", "target"]))
    header = draw(st.lists(st.sampled_from(NAMES), min_size=2, max_size=4, unique=True))
    if mistake == "header":
        header[draw(st.integers(1, len(header) - 1))] = draw(st.sampled_from(["", header[0]]))
    target = "price" if mistake == "target" else draw(st.sampled_from(header))
    width = len(header)
    cell = st.one_of(numbers, numbers, missing, not_finite, words) if mistake == "cells" else numbers
    row = st.lists(cell, min_size=width, max_size=width)
    if mistake == "width":
        row = st.one_of(row, st.lists(cell, min_size=1, max_size=width + 1))
    rows = draw(st.lists(st.one_of(row, row, row, st.just([])), min_size=2, max_size=6))  # []: a blank line
    newline = draw(st.sampled_from(["\n", "\r\n"]))
    lines = [",".join(header), *(",".join(cells) for cells in rows)]
    return newline.join(lines) + draw(st.sampled_from([newline, ""])), target


def expected_outcome(text: str, target: str) -> tuple[str, object]:
    """("table", (N, features + 1) float32 array in header order) or (why refused, acceptable messages)."""
    reader = csv.reader(io.StringIO(text, newline=""))
    header = next(reader)
    if any(not name.strip() for name in header):
        return "refused: header", ["the header has an empty column name"]
    if len(set(header)) < len(header):
        return "refused: header", ["the header repeats the column name(s)"]
    rows = [row for row in reader if row]  # blank lines are not rows
    for number, row in enumerate(rows, start=2):  # the header is row 1
        if len(row) != len(header):
            return "refused: width", [f"row {number} has {len(row)} fields, the header names {len(header)}"]
    if not rows:
        return "refused: no rows", ["no data rows below the header"]
    if target not in header:
        return "refused: no target", [f"no column {target!r}; the columns are {', '.join(header)}"]
    columns = {name: [row[i] for row in rows] for i, name in enumerate(header)}

    def is_missing(cell: str) -> bool:
        return cell in NULLS or not cell.strip()

    def is_number_column(cells: list[str]) -> bool:
        present = [c for c in cells if not is_missing(c)]
        return not present or sum(bool(NUMBER.fullmatch(c)) for c in present) > len(present) / 2

    if not is_number_column(columns[target]):
        return "refused: text target", [f"target column {target!r} holds text, not numbers"]
    features = [name for name in header if name != target and is_number_column(columns[name])]
    if not features:
        return "refused: no features", ["no feature columns"]
    used = [*features, target]
    words_at = [
        f"row {i + 2}, column {name!r}: {cell!r} is not a number"
        for name in used
        for i, cell in enumerate(columns[name])
        if not is_missing(cell) and not NUMBER.fullmatch(cell)
    ]
    if words_at:
        return "refused: not a number", words_at
    values = {name: [np.nan if is_missing(c) else float(c) for c in columns[name]] for name in used}
    table = np.array([values[name] for name in used]).T  # (rows, used) float64
    infinite = [
        f"row {i + 2}, column {used[j]!r}" for j in range(len(used)) for i in np.flatnonzero(np.isinf(table[:, j]))
    ]
    if infinite:
        return "refused: not finite", infinite[:1]  # the first column with one, its first row
    table = table[~np.isnan(table).any(axis=1)]
    with np.errstate(over="ignore"):
        overflow = np.abs(table) > np.finfo(np.float32).max
    if overflow.any():
        return "refused: float32 overflow", ["is too large for float32"]
    if len(table) < 2:
        return "refused: too few rows", [f"{len(table)} data rows are too few"]
    return "table", table.astype(np.float32)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(case=csv_texts())
def test_random_csv_loads_exactly_or_is_refused_naming_the_file_and_row(case, tmp_path_factory):
    text, target = case
    path = Path(tempfile.mkdtemp(dir=tmp_path_factory.getbasetemp())) / "random.csv"
    path.write_bytes(text.encode())
    kind, expected = expected_outcome(text, target)
    record_fault("random_csvs")
    event(kind)  # --hypothesis-show-statistics shows how often each outcome was drawn

    refusal = None
    with warnings.catch_warnings(record=True) as warned:  # a warning would be more lines on stderr
        warnings.simplefilter("always")
        try:
            module = TableDataModule(str(path), targets=[target], val_fraction=0.0, standardize=False)
            x, y = module.load("fit")["train"]
        except UserError as err:
            refusal = err
    assert not warned, [str(w.message) for w in warned]
    if refusal is not None:
        message = str(refusal)
        assert kind != "table", f"refused a good table: {message}"
        assert "\n" not in message, message
        assert any(fragment in message for fragment in expected), (message, expected)
        return
    assert kind == "table", f"loaded a table that should be refused with {expected}"
    loaded = torch.cat([x, y], dim=1).numpy()
    assert sorted(map(tuple, loaded.tolist())) == sorted(map(tuple, expected.tolist()))
