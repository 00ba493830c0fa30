"""Trust: no traceback where one line is promised, no silent wrong answer, no lost run.

`test_refused_in_one_line` runs one case per probe (values the Trainer rejects, configs that name code,
checkpoints that must not be used, questions asked without a checkpoint) through `main` in this process.
The other tests inject one fault each: runs racing for a directory, a full or read-only disk, SIGTERM,
a non-finite buffer; and check the optimizer conventions (`--optimizer`, `--lr_scheduler`, exact resume).
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import importlib
import inspect
import multiprocessing
import os
import pkgutil
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import lightning as L
import pytest
import torch
import yaml
from jsonargparse import ArgumentError

from lit_linreg.callbacks import CoefficientLogger, FitFigure, LeastSquaresReference
from lit_linreg.cli import checkpoint
from lit_linreg.cli import main as cli
from lit_linreg.cli.checkpoint import BestCheckpoint, LastCheckpoint, claim_run_dir, find_last, load_checkpoint
from lit_linreg.cli.constraints import constraints_of
from lit_linreg.cli.main import cli_main, main
from lit_linreg.data.datamodules import SyntheticDataModule
from lit_linreg.data.table_datamodule import TableDataModule
from lit_linreg.model import metrics
from lit_linreg.model.metrics import R2
from lit_linreg.model.nets import MLP
from tests.conftest import QUIET, ROOT, config, record_fault
from tests.faults import OsFailingAtFsync

FAST = ["--reference.enabled", "false", "--figure.enabled", "false"]  # neither is under test here
TOY = ["--config", config("toy.yaml"), "--trainer.max_epochs", "2", *FAST]
CROP = ["--config", config("crop_yield.yaml"), "--trainer.max_epochs", "2", *FAST]


def run(*args: str, root: Path) -> int:
    return main([*args, *QUIET, "--trainer.default_root_dir", str(root)])


def digest(root: Path) -> dict[str, str]:
    """sha256 of every file under `root`, by relative path."""
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() for p in root.rglob("*") if p.is_file()
    }


def weights(path: Path) -> dict[str, torch.Tensor]:
    return load_checkpoint(path)["state_dict"]


@pytest.fixture(scope="module")
def toy_root(tmp_path_factory) -> Path:
    """A toy run of 3 epochs, validated each epoch (so it has a best checkpoint). Copy it; never write into it."""
    root = tmp_path_factory.mktemp("toy")
    assert run("fit", *TOY, "--trainer.max_epochs", "3", "--trainer.check_val_every_n_epoch", "1", root=root) == 0
    return root


# --- Refused in one line ------------------------------------------------------------------------------------------
# A case: (setup, argv, fragments of the message, exit code). `setup(tmp, toy_root)` prepares tmp (the run
# directory is tmp/runs); "{tmp}" in argv and fragments stands for tmp.
Setup = Callable[[Path, Path], None]


def nothing(tmp: Path, toy_root: Path) -> None:
    pass


def write(name: str, text: str) -> Setup:
    return lambda tmp, toy_root: (tmp / name).write_text(text)


def copy_runs(tmp: Path, toy_root: Path) -> None:
    shutil.copytree(toy_root, tmp / "runs")


def edited_checkpoint(edit: Callable[[dict], None]) -> Setup:
    """tmp/edited.ckpt: the toy run's last.ckpt after `edit(checkpoint)`."""

    def setup(tmp: Path, toy_root: Path) -> None:
        state = torch.load(find_last(toy_root), weights_only=True)
        edit(state)
        torch.save(state, tmp / "edited.ckpt")

    return setup


def never_validated(tmp: Path, toy_root: Path) -> None:
    """The toy run, as if it had never validated: its last.ckpt records no best checkpoint."""
    copy_runs(tmp, toy_root)
    last = find_last(tmp / "runs")
    state = torch.load(last, weights_only=True)
    state["lit_linreg"]["best_model_path"] = ""
    torch.save(state, last)


LAMBDA = """trainer:
  callbacks:
    - class_path: lightning.pytorch.callbacks.LambdaCallback
      init_args:
        on_fit_start: os.system
"""
# Nine levels of ten aliases: 10**9 strings once expanded, from 10 lines.
LAUGHS = "a0: &a0 [x, x, x, x, x, x, x, x, x, x]\n" + "".join(
    f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 10)}]\n" for i in range(1, 9)
)
EDITED = ["--ckpt_path", "{tmp}/edited.ckpt"]

REFUSALS = [
    # --- values Lightning and torch reject after parsing ---------------------------------------------------------
    pytest.param(nothing, ["fit", *TOY, "--trainer.accelerator", "bogus"], ["invalid accelerator name"], 2, id="acc"),
    pytest.param(nothing, ["fit", *TOY, "--trainer.devices", "abc"], ["`devices` selected with"], 2, id="devices-abc"),
    pytest.param(nothing, ["fit", *TOY, "--trainer.strategy", "bogus"], ["invalid strategy name"], 2, id="strategy"),
    pytest.param(
        nothing,
        ["fit", *TOY, "--trainer.accelerator", "cpu", "--trainer.num_nodes", "2"],
        ["--trainer.num_nodes 2 needs a launcher"],
        2,
        id="num-nodes-without-launcher",
    ),
    pytest.param(
        nothing,
        ["fit", *TOY, "--trainer.accelerator", "cpu", "--trainer.devices", "1000"],  # hung, starting processes
        ["--trainer.devices 1000 asks for more CPU processes than this machine's"],
        2,
        id="devices-1000-on-cpu",
    ),
    pytest.param(nothing, ["fit", *TOY, "--seed_everything", "-1"], ["seed_everything must be in"], 2, id="seed-neg"),
    pytest.param(
        nothing,
        [
            "fit",
            *TOY,
            "--trainer.max_epochs",
            "1",
            "--trainer.check_val_every_n_epoch",
            "1",
            "--trainer.callbacks+",
            "EarlyStopping",
            "--trainer.callbacks.monitor",
            "val/bogus",
        ],  # fmt: skip
        ["Early stopping conditioned on metric `val/bogus` which is not available"],
        2,
        id="early-stopping-on-no-metric",
    ),
    pytest.param(nothing, ["fit", *TOY, "--ckpt_path", ""], ["--ckpt_path is empty"], 2, id="ckpt-path-empty"),
    pytest.param(
        nothing,
        ["fit", "--config", config("synthetic.yaml"), *FAST, "--data.n_samples", str(10**13)],  # within int64
        ["out of memory (", " GiB asked for): lower the sizes the config asks for (data.n_samples, ...)"],
        1,
        id="rows-past-the-memory",
    ),
    # --- questions that need trained weights -------------------------------------------------------------------
    *(
        pytest.param(nothing, [cmd, *TOY], [f"{cmd} needs --ckpt_path"], 2, id=f"{cmd}-without-ckpt")
        for cmd in ("predict", "validate", "test")
    ),
    # --- configs that would run code ----------------------------------------------------------------------------
    pytest.param(
        write("lambda.yaml", LAMBDA),
        ["fit", *TOY, "--config", "{tmp}/lambda.yaml"],
        ["a config may not name lightning.pytorch.callbacks.LambdaCallback"],
        2,
        id="lambda-callback-config",
    ),
    pytest.param(
        nothing,
        ["fit", *TOY, "--trainer.callbacks+", "LambdaCallback"],
        ["a config may not name lightning.pytorch.callbacks"],
        2,
        id="lambda-callback-flag",
    ),
    pytest.param(
        nothing,
        ["fit", *TOY, "--trainer.callbacks+", "tests.faults.CallsAFunction", "--trainer.callbacks.fn", "math.sqrt"],
        ["trainer.callbacks.0.init_args.fn: a config may not name a function (sqrt)"],
        2,
        id="function-valued-option",
    ),
    pytest.param(
        nothing, ["fit", *TOY, "--data.class_path", "this.Foo"], ["a config may not name this.Foo"], 2, id="this-foo"
    ),
    pytest.param(
        write("laughs.yaml", LAUGHS + "model:\n  lr: *a8\n"),
        ["fit", *TOY, "--config", "{tmp}/laughs.yaml"],
        ["a config expands to more than 100,000 values"],
        2,
        id="billion-laughs",
    ),
    pytest.param(
        write("deep.yaml", "model:\n  lr: " + "[" * 50_000 + "]" * 50_000 + "\n"),  # crashed PyYAML's C stack
        ["fit", *TOY, "--config", "{tmp}/deep.yaml"],
        ["a config nests deeper than 64 levels"],
        2,
        id="deep-brackets",
    ),
    pytest.param(
        write("loop.yaml", "a: &a [*a]\nmodel:\n  lr: *a\n"),
        ["fit", *TOY, "--config", "{tmp}/loop.yaml"],
        ["a config nests deeper than 64 levels"],
        2,
        id="recursive-alias",
    ),
    # --- checkpoints that must not be used ----------------------------------------------------------------------
    pytest.param(
        edited_checkpoint(lambda c: c["state_dict"]["net.weight"].fill_(float("nan"))),
        ["predict", *TOY, *EDITED],
        ["{tmp}/edited.ckpt: refused: non-finite values (NaN or inf) in net.weight"],
        2,
        id="ckpt-nan-weight",
    ),
    pytest.param(
        edited_checkpoint(lambda c: c["state_dict"]["design.y_std"].fill_(float("inf"))),
        ["predict", *TOY, *EDITED],
        ["non-finite values (NaN or inf) in design.y_std"],
        2,
        id="ckpt-inf-buffer",
    ),
    pytest.param(
        edited_checkpoint(lambda c: c["state_dict"].pop("design.y_std")),
        ["predict", *TOY, *EDITED],
        ["{tmp}/edited.ckpt: does not fit this model: its state_dict lacks design.y_std"],
        2,
        id="ckpt-missing-tensor",
    ),
    pytest.param(
        edited_checkpoint(lambda c: c["state_dict"].update(extra=torch.zeros(2))),
        ["predict", *TOY, *EDITED],
        ["{tmp}/edited.ckpt: does not fit this model: its state_dict has an extra extra"],
        2,
        id="ckpt-extra-tensor",
    ),
    pytest.param(
        edited_checkpoint(lambda c: c.pop("optimizer_states")),
        ["fit", *TOY, *EDITED],
        ["{tmp}/edited.ckpt: holds weights only, no optimizer state, so fit cannot resume from it"],
        2,
        id="ckpt-weights-only-fit",
    ),
    pytest.param(
        copy_runs,
        ["fit", *TOY, "--optimizer", "Adam", "--ckpt_path", "last"],
        ["was trained with the SGD optimizer, this run configures Adam: resume with no --optimizer"],
        2,
        id="ckpt-other-optimizer",
    ),
    pytest.param(
        copy_runs,
        ["predict", *CROP, "--ckpt_path", "last"],
        [
            "--ckpt_path last: no run under {tmp}/runs trained on this data; the newest,",
            "was trained with ToyDataModule (this run: CropYieldDataModule)",
        ],
        2,
        id="ckpt-last-of-another-experiment",
    ),
    pytest.param(
        never_validated,
        ["predict", *TOY, "--ckpt_path", "best"],
        ["--ckpt_path best: the run of", "recorded no best checkpoint (it never validated)"],
        2,
        id="ckpt-best-never-validated",
    ),
    # --- run directories that are not this run's to write -------------------------------------------------------
    pytest.param(
        copy_runs,
        [
            "fit",
            *TOY,
            "--trainer.logger",
            "TensorBoardLogger",
            "--trainer.logger.save_dir",
            "{tmp}/runs",
            "--trainer.logger.version",
            "0",
        ],  # fmt: skip
        ["{tmp}/runs/lightning_logs/version_0 holds another run"],
        2,
        id="logger-version-of-another-run",
    ),
    pytest.param(
        write("a-file", "not a directory"),
        ["fit", *TOY, "--trainer.default_root_dir", "{tmp}/a-file"],
        ["{tmp}/a-file/lightning_logs: Not a directory"],
        1,
        id="root-is-a-file",
    ),
]


@pytest.mark.parametrize("setup, argv, expected, code", REFUSALS)
def test_refused_in_one_line(setup, argv, expected, code, tmp_path, capsys, toy_root):
    setup(tmp_path, toy_root)
    args = [a.replace("{tmp}", str(tmp_path)) for a in argv]
    capsys.readouterr()
    start = time.monotonic()
    # The run directory first, so that a case's own --trainer.default_root_dir comes later and wins.
    got = main([args[0], *QUIET, "--trainer.default_root_dir", str(tmp_path / "runs"), *args[1:]])
    seconds = time.monotonic() - start
    captured = capsys.readouterr()
    assert got == code, captured.err
    assert "Traceback" not in captured.err
    assert len(captured.err.splitlines()) == 1 and captured.err.startswith("lit-linreg: error: "), captured.err
    for fragment in expected:
        assert fragment.replace("{tmp}", str(tmp_path)) in captured.err, captured.err
    assert "The Zen of Python" not in captured.out  # `this` was never imported
    assert seconds < 20
    record_fault(
        "hangs" if any(k in str(argv) for k in ("laughs", "num_nodes", "deep", "loop", "1000")) else "refusals"
    )


# --- Runs never share a directory -------------------------------------------------------------------------------


def _claim(parent: Path, barrier) -> str:
    barrier.wait()  # every process claims at the same moment
    return claim_run_dir(parent).name


def test_runs_started_at_the_same_moment_each_claim_their_own_directory(tmp_path):
    context = multiprocessing.get_context("fork")
    barrier = context.Manager().Barrier(8)
    with context.Pool(8) as pool:
        names = pool.starmap(_claim, [(tmp_path, barrier)] * 8)
    assert sorted(names) == [f"version_{n}" for n in range(8)]
    record_fault("races", 8)


def test_without_a_logger_a_second_run_keeps_out_of_the_first_runs_files(tmp_path):
    no_logger = [*TOY, "--trainer.max_epochs", "1", "--trainer.logger", "false"]
    assert run("fit", *no_logger, root=tmp_path) == 0
    first = digest(tmp_path)
    assert run("fit", *no_logger, "--model.lr", "0.02", root=tmp_path) == 0
    after = digest(tmp_path)
    lost = [name for name, sha in first.items() if after.get(name) != sha]
    record_fault("races")
    record_fault("lost", len(lost))
    assert lost == []
    runs = tmp_path / "lightning_logs"
    assert sorted(p.name for p in runs.iterdir()) == ["version_0", "version_1"]
    for version, lr in (("version_0", 0.01), ("version_1", 0.02)):
        assert f"lr: {lr}" in (runs / version / "config.yaml").read_text()
        assert load_checkpoint(runs / version / "checkpoints" / "last.ckpt")["hyper_parameters"]["lr"] == lr


# --- Full and read-only disks -----------------------------------------------------------------------------------


def assert_nothing_half_written(root: Path, before: dict[str, str]) -> None:
    after = digest(root)
    lost = [name for name, sha in before.items() if after.get(name) != sha]
    record_fault("lost", len(lost))
    assert lost == []
    # (TensorBoard's event files are logs, appended to: one may be left empty, as any log would.)
    ours = [p for pattern in ("*.yaml", "*.ckpt", "*.csv") for p in root.rglob(pattern)]
    assert not [p for p in ours if p.stat().st_size == 0]
    assert not list(root.rglob("*.tmp"))


@pytest.mark.parametrize("fsync, file", [(1, "config.yaml"), (3, "last.ckpt")], ids=["config", "checkpoint"])
def test_a_full_disk_while_resuming_ends_in_one_line_and_leaves_nothing_half_written(
    fsync, file, tmp_path, toy_root, monkeypatch, capsys
):
    root = tmp_path / "runs"
    shutil.copytree(toy_root, root)
    before = digest(root)
    monkeypatch.setattr(checkpoint, "os", OsFailingAtFsync(fsync, errno.ENOSPC))  # the fsync-th write's fsync fails
    capsys.readouterr()
    assert run("fit", *TOY, "--trainer.max_epochs", "5", "--ckpt_path", "last", root=root) == 1
    err = capsys.readouterr().err
    record_fault("disk_faults")
    assert len(err.splitlines()) == 1 and err.startswith("lit-linreg: error: "), err
    assert err.rstrip().endswith(f"/lightning_logs/version_1/{'checkpoints/' if fsync > 1 else ''}{file}: {ENOSPC}")
    assert_nothing_half_written(root, before)


ENOSPC = os.strerror(errno.ENOSPC)


@pytest.fixture
def tmpfs(tmp_path):
    """A 256 KiB tmpfs at tmp_path/disk (root only): a disk that really fills up, and can be made read-only."""
    disk = tmp_path / "disk"
    disk.mkdir()
    if os.geteuid() != 0 or subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(disk)]).returncode:
        pytest.skip("mounting a tmpfs needs root")
    yield disk
    subprocess.run(["umount", "-l", str(disk)], check=True)


def test_a_really_full_disk_and_a_read_only_one_end_in_one_line(tmpfs, toy_root, capsys):
    root = tmpfs / "runs"
    shutil.copytree(toy_root, root, ignore=shutil.ignore_patterns("events.out.*"))
    with contextlib.suppress(OSError), open(tmpfs / "filler", "wb", buffering=0) as filler:
        while True:  # fill the disk to the last byte
            filler.write(b"\0" * 4096)
    before = digest(root)
    capsys.readouterr()
    assert run("fit", *TOY, "--trainer.max_epochs", "5", "--ckpt_path", "last", root=root) == 1
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1 and err.rstrip().endswith(ENOSPC), err
    assert_nothing_half_written(root, before)

    subprocess.run(["mount", "-o", "remount,ro", str(tmpfs)], check=True)
    assert run("fit", *TOY, "--ckpt_path", "last", root=root) == 1
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1 and err.rstrip().endswith(os.strerror(errno.EROFS)), err
    assert_nothing_half_written(root, before)
    record_fault("disk_faults", 2)


# --- Stopped runs and broken states -----------------------------------------------------------------------------


def test_sigterm_stops_fit_with_exit_143_and_its_last_checkpoint_resumes_bit_for_bit(tmp_path, capsys):
    five = [*TOY, "--trainer.max_epochs", "5"]
    assert run("fit", *five, root=tmp_path / "whole") == 0
    capsys.readouterr()
    assert run("fit", *five, "--trainer.callbacks+", "tests.faults.SigtermAt", "--trainer.callbacks.epoch", "3",
               root=tmp_path / "stopped") == 143  # fmt: skip
    err = capsys.readouterr().err
    last = find_last(tmp_path / "stopped")
    assert err.splitlines() == [
        f"lit-linreg: error: stopped by SIGTERM; {last} holds the last completed epoch: resume with --ckpt_path last"
    ]
    record_fault("sigterms")
    # The toy epoch is one batch: Lightning finishes it, writes last.ckpt, then stops; epoch 4 never starts.
    assert load_checkpoint(find_last(tmp_path / "stopped"))["epoch"] == 3
    assert run("fit", *five, "--ckpt_path", "last", root=tmp_path / "stopped") == 0
    whole, resumed = weights(find_last(tmp_path / "whole")), weights(find_last(tmp_path / "stopped"))
    record_fault("lost", sum(not torch.equal(whole[k], resumed[k]) for k in whole))
    assert all(torch.equal(whole[k], resumed[k]) for k in whole)


RESUME = "{last} holds the last completed epoch: resume with --ckpt_path last"
# (signal, the hook it arrives in, the training epoch, the exit code, the message, the epoch last.ckpt holds):
# each moment of a run a signal Lightning handles can arrive in. SIGHUP, SIGUSR1, SIGUSR2 keep their default,
# ending the process at once, as SIGKILL does (see the test of them below).
STOPS = [
    pytest.param("SIGTERM", "on_fit_end", 0, 143, f"stopped by SIGTERM; {RESUME}", 2, id="sigterm-at-fit-end"),
    *(
        pytest.param(*case, marks=pytest.mark.slow, id=case[0].lower() + "-" + name)
        for name, case in {
            "sanity-check": ("SIGTERM", "on_sanity_check_start", 0, 143, f"stopped by SIGTERM; {RESUME}", 0),
            "first-epoch": (
                "SIGINT", "on_train_batch_start", 0, 130,
                "interrupted before the first epoch ended: no checkpoint was written", None,
            ),
            "mid-epoch": ("SIGTERM", "on_train_batch_start", 1, 143, f"stopped by SIGTERM; {RESUME}", 1),
            "ctrl-c-mid-epoch": ("SIGINT", "on_train_batch_start", 1, 130, f"interrupted; {RESUME}", 0),
            "validation": ("SIGTERM", "on_validation_batch_start", 1, 143, f"stopped by SIGTERM; {RESUME}", 1),
            "epoch-end": ("SIGTERM", "on_train_epoch_end", 1, 143, f"stopped by SIGTERM; {RESUME}", 1),
            "train-end": ("SIGTERM", "on_train_end", 0, 143, f"stopped by SIGTERM; {RESUME}", 2),
            "fit-end": ("SIGINT", "on_fit_end", 0, 130, f"interrupted; {RESUME}", 2),
        }.items()
    ),
]  # fmt: skip


@pytest.fixture
def sigint_restored():
    """Ctrl-C's handler as it was: Lightning sets it to ignore while it shuts a run down."""
    handler = signal.getsignal(signal.SIGINT)
    yield
    signal.signal(signal.SIGINT, handler)


@pytest.mark.parametrize("signum, hook, epoch, code, message, saved_epoch", STOPS)
def test_a_signal_during_fit_exits_128_plus_its_number_saying_what_it_left(
    signum, hook, epoch, code, message, saved_epoch, tmp_path, capsys, sigint_restored
):
    fault = ["--trainer.callbacks+", "tests.faults.SignalAt", "--trainer.callbacks.signum", signum]
    fault += ["--trainer.callbacks.hook", hook, "--trainer.callbacks.epoch", str(epoch)]
    capsys.readouterr()
    got = run("fit", *TOY, "--trainer.max_epochs", "3", "--trainer.check_val_every_n_epoch", "1", *fault, root=tmp_path)
    err = capsys.readouterr().err
    last = next(tmp_path.rglob("last.ckpt"), None)
    assert (got, err.splitlines()) == (code, [f"lit-linreg: error: {message.format(last=last)}"])
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # Ctrl-C works again after main()
    assert (load_checkpoint(last)["epoch"] if last else None) == saved_epoch
    record_fault("sigterms")


@pytest.mark.slow
@pytest.mark.parametrize(
    "command, hook", [("validate", "on_validation_batch_start"), ("predict", "on_predict_batch_start")]
)
def test_sigterm_during_validate_or_predict_exits_143(command, hook, tmp_path, toy_root, capsys):
    shutil.copytree(toy_root, tmp_path / "runs")
    fault = ["--trainer.callbacks+", "tests.faults.SignalAt", "--trainer.callbacks.hook", hook]
    capsys.readouterr()
    assert run(command, *TOY, "--ckpt_path", "last", *fault, root=tmp_path / "runs") == 143  # their loops finish
    assert capsys.readouterr().err.splitlines() == [
        f"lit-linreg: error: stopped by SIGTERM during {command}: its output may be incomplete; run it again"
    ]
    record_fault("sigterms")


@pytest.mark.slow
@pytest.mark.parametrize("signum", ["SIGHUP", "SIGUSR1", "SIGUSR2"])
def test_signals_lightning_leaves_alone_end_the_process_by_that_signal_with_last_ckpt_intact(signum, run_process):
    # Their default ends the process at once, as SIGKILL does: a shell sees 128 + the signal, and the atomic
    # writes leave last.ckpt at the last completed epoch.
    fault = ["--trainer.callbacks+", "tests.faults.SignalAt", "--trainer.callbacks.signum", signum]
    result = run_process("fit", *TOY, "--trainer.max_epochs", "3", *fault, "--trainer.callbacks.epoch", "1")
    assert result.returncode == -getattr(signal, signum), result.stderr[-2000:]
    assert load_checkpoint(next(Path(result.args[-1]).rglob("last.ckpt")))["epoch"] == 0
    record_fault("kills")


def test_a_non_finite_buffer_is_never_saved(tmp_path, capsys):
    poison = ["--trainer.callbacks+", "tests.faults.PoisonBuffer", "--trainer.callbacks.epoch", "1"]
    assert run("fit", *TOY, "--trainer.max_epochs", "3", *poison, root=tmp_path) == 1
    assert "design.y_std became non-finite by the end of epoch 1: nothing was saved" in capsys.readouterr().err
    record_fault("divergences")
    assert load_checkpoint(find_last(tmp_path))["epoch"] == 0  # the last finite state; loading checks every tensor


# --- Optimizers and schedulers, as LightningCLI documents them ----------------------------------------------------


def param_group(root: Path) -> dict:
    return load_checkpoint(find_last(root))["optimizer_states"][0]["param_groups"][0]


def test_adam_resumes_bit_for_bit_and_keeps_its_own_settings(tmp_path):
    adam = [*TOY, "--optimizer", "Adam", "--optimizer.lr", "0.1"]
    assert run("fit", *adam, "--trainer.max_epochs", "4", root=tmp_path / "whole") == 0
    assert run("fit", *adam, root=tmp_path / "resumed") == 0
    assert run("fit", *adam, "--trainer.max_epochs", "4", "--ckpt_path", "last", root=tmp_path / "resumed") == 0
    whole, resumed = (load_checkpoint(find_last(tmp_path / name)) for name in ("whole", "resumed"))
    tensors = [
        (whole["state_dict"][k], resumed["state_dict"][k]) for k in whole["state_dict"]
    ] + [  # Adam's moments and step count
        (whole["optimizer_states"][0]["state"][0][k], resumed["optimizer_states"][0]["state"][0][k])
        for k in ("exp_avg", "exp_avg_sq", "step")
    ]
    record_fault("lost", sum(not torch.equal(a, b) for a, b in tensors))
    assert all(torch.equal(a, b) for a, b in tensors)

    # --model.lr configures the default SGD only: Adam keeps its own lr (it used to take 0.5 here) ...
    assert run("fit", *adam, "--trainer.max_epochs", "5", "--model.lr", "0.5", "--ckpt_path", "last",
               root=tmp_path / "resumed") == 0  # fmt: skip
    assert param_group(tmp_path / "resumed")["lr"] == 0.1
    # ... and a setting changed for the resume takes effect.
    assert run("fit", *adam, "--trainer.max_epochs", "6", "--optimizer.lr", "0.05", "--ckpt_path", "last",
               root=tmp_path / "resumed") == 0  # fmt: skip
    assert param_group(tmp_path / "resumed")["lr"] == 0.05


def test_a_scheduler_without_an_optimizer_schedules_the_default_sgd_and_resumes(tmp_path):
    step_lr = [*TOY, "--lr_scheduler", "StepLR", "--lr_scheduler.step_size", "1", "--lr_scheduler.gamma", "0.5"]
    assert run("fit", *step_lr, "--trainer.max_epochs", "3", root=tmp_path) == 0
    assert param_group(tmp_path)["lr"] == pytest.approx(0.01 * 0.5**3)  # halved after each epoch, from --model.lr
    assert run("fit", *step_lr, "--trainer.max_epochs", "4", "--ckpt_path", "last", root=tmp_path) == 0
    assert param_group(tmp_path)["lr"] == pytest.approx(0.01 * 0.5**4)  # the schedule goes on, not back to 0.01


def test_lbfgs_fits_the_toy_line_and_the_model_names_its_optimizer(tmp_path):
    cli = cli_main(["fit", *TOY, "--optimizer", "LBFGS", "--optimizer.lr", "1", *QUIET,
                    "--trainer.default_root_dir", str(tmp_path)])  # fmt: skip
    assert type(cli.trainer.optimizers[0]).__name__ == "LBFGS"
    assert cli.model.net.weight.item() == pytest.approx(2.0, abs=1e-4)  # the notebooks' w = 2


# --- The same experiment, or a refusal --------------------------------------------------------------------------


def test_last_and_best_stay_within_the_experiment(tmp_path):
    validated = ["--trainer.check_val_every_n_epoch", "1"]
    assert run("fit", *CROP, *validated, root=tmp_path) == 0  # version_0: standardized (the default)
    assert run("fit", *CROP, "--data.standardize", "false", "--model.lr", "0.00001", root=tmp_path) == 0  # newer
    runs = tmp_path / "lightning_logs"
    assert run("predict", *CROP, "--ckpt_path", "last", root=tmp_path) == 0  # version_2
    assert f"ckpt_path: {runs}/version_0/checkpoints/last.ckpt" in (runs / "version_2" / "config.yaml").read_text()
    assert run("predict", *CROP, "--ckpt_path", "best", root=tmp_path) == 0  # version_3
    assert f"ckpt_path: {runs}/version_0/checkpoints/best-" in (runs / "version_3" / "config.yaml").read_text()


def test_a_resume_on_other_data_names_the_arguments_that_differ_however_long_the_paths(tmp_path, capsys):
    deep = tmp_path / ("a_directory_name_long_enough_that_a_description_of_it_runs_past_one_hundred" + "_x" * 20)
    tables = []
    for name in ("sales_2025.csv", "sales_2026.csv"):
        (deep / name).parent.mkdir(exist_ok=True)
        (deep / name).write_bytes((ROOT / "data" / "houses.csv").read_bytes())
        tables.append(str(deep / name))
    table = ["--config", config("table.yaml"), "--trainer.max_epochs", "1", *FAST]
    assert run("fit", *table, "--data.path", tables[0], root=tmp_path) == 0
    record_fault("refusals")
    assert run("predict", *table, "--data.path", tables[1], "--ckpt_path", "last", root=tmp_path) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "no run under" in err and "the newest, " in err, err
    assert f"was trained with path={os.path.realpath(tables[0])} (this run: {os.path.realpath(tables[1])})" in err


def test_resuming_on_a_table_changed_since_the_checkpoint_says_so_and_goes_on(tmp_path, caplog):
    table = tmp_path / "sales.csv"
    table.write_bytes((ROOT / "data" / "houses.csv").read_bytes())
    args = ["--config", config("table.yaml"), *FAST, "--data.path", str(table), "--trainer.max_epochs"]
    notice = f"{table.resolve()} changed since the checkpoint was written"
    assert run("fit", *args, "1", root=tmp_path) == 0
    assert run("fit", *args, "2", "--ckpt_path", "last", root=tmp_path) == 0
    assert notice not in caplog.text  # unchanged: resumed without a word
    lines = table.read_text().splitlines(keepends=True)
    table.write_text("".join(lines + lines[1:3]))  # two rows appended
    assert run("fit", *args, "3", "--ckpt_path", "last", root=tmp_path) == 0
    assert caplog.text.count(notice) == 1


# --- Quiet, conventional runs -----------------------------------------------------------------------------------


def test_a_run_prints_no_noise_and_writes_files_with_the_umask(tmp_path, capsys, caplog, recwarn, monkeypatch):
    old = os.umask(0o027)
    try:
        assert run("fit", *TOY, "--trainer.max_epochs", "1", root=tmp_path) == 0
        capsys.readouterr()
        assert run("predict", *TOY, "--ckpt_path", "last", root=tmp_path) == 0
    finally:
        os.umask(old)
    assert "resuming from" not in capsys.readouterr().out  # predict resumes nothing
    assert not [r for r in caplog.records if "litlogger" in r.getMessage()]
    assert not [w for w in recwarn if "dirpath has changed" in str(w.message)]
    for path in (find_last(tmp_path), tmp_path / "lightning_logs" / "version_0" / "config.yaml"):
        assert path.stat().st_mode & 0o777 == 0o640, path  # 0666 less the umask, as open() would give

    monkeypatch.setenv("LIT_LINREG_DEBUG", "0")  # false: still one line
    assert run("fit", *TOY, "--model.lr", "abc", root=tmp_path) == 2
    assert len(capsys.readouterr().err.splitlines()) == 1
    monkeypatch.setenv("LIT_LINREG_DEBUG", "yes")
    with pytest.raises(ArgumentError):
        run("fit", *TOY, "--model.lr", "abc", root=tmp_path)
    with pytest.raises(SystemExit):
        main(["--help"])
    assert capsys.readouterr().out.startswith("usage: lit-linreg ")


# --- In separate processes ----------------------------------------------------------------------------------------


def lit_linreg(*args: str, root: Path) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop("LIT_LINREG_DEBUG", None)
    command = [sys.executable, "-m", "lit_linreg", *args, *QUIET, "--trainer.default_root_dir", str(root)]
    return subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


@pytest.mark.slow
def test_two_fits_started_together_each_keep_their_own_run(tmp_path):
    processes = [lit_linreg("fit", *TOY, "--model.lr", lr, root=tmp_path) for lr in ("0.01", "0.02")]
    assert [p.wait(timeout=300) for p in processes] == [0, 0]
    record_fault("races", 2)
    lrs = []
    for version in sorted((tmp_path / "lightning_logs").iterdir()):
        config_lr = next(line for line in (version / "config.yaml").read_text().splitlines() if "  lr:" in line)
        lrs.append(load_checkpoint(version / "checkpoints" / "last.ckpt")["hyper_parameters"]["lr"])
        assert config_lr.split()[-1] == str(lrs[-1])  # each run's config beside its own checkpoint
    assert sorted(lrs) == [0.01, 0.02]


@pytest.mark.slow
def test_sigterm_from_outside_exits_non_zero_with_an_intact_checkpoint(tmp_path):
    process = lit_linreg("fit", "--config", config("toy.yaml"), "--trainer.max_epochs", "100000", root=tmp_path)
    deadline = time.monotonic() + 120
    while not list(tmp_path.rglob("last.ckpt")) and time.monotonic() < deadline:
        time.sleep(0.2)
    time.sleep(1.0)
    process.send_signal(signal.SIGTERM)
    _, err = process.communicate(timeout=60)
    assert process.returncode == 143, err[-2000:]
    assert err.splitlines()[-1].startswith("lit-linreg: error: stopped by SIGTERM")
    assert load_checkpoint(find_last(tmp_path))["epoch"] >= 1
    record_fault("sigterms")


@pytest.mark.slow
def test_make_train_prints_the_notebooks_prediction_and_the_tables():
    # --no-print-directory: run from `make faults`, a nested make would end with "Leaving directory".
    make = ["make", "--no-print-directory", "train"]
    result = subprocess.run(make, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    lines = result.stdout.splitlines()
    assert "Prediction after training: f(5) = 10.000" in lines  # the toy config, as the notebooks print it
    house = re.fullmatch(r"Predicted price_k of house N0001 \(120 m2, 4 rooms, 20 years, 8\.5 km\): (\S+)", lines[-1])
    assert house and float(house[1]) == pytest.approx(268.7618, abs=1e-3)  # the table config, as the README shows


# --- Integer options: every one has a range, and the CLI refuses a value outside it in one line -----------------


def integer_parameters(cls: type) -> list[str]:
    """The parameters of `cls.__init__` that take an int (or a list of them), bool alone excepted."""
    names = []
    for name, parameter in inspect.signature(cls.__init__).parameters.items():
        hint = str(parameter.annotation)
        if re.search(r"\bint\b", hint) and name not in ("self", "seed_everything"):
            names.append(name)
    return names


def configurable_classes() -> list[type]:
    """The classes of lit_linreg a config can name or set: callbacks, DataModules, models and networks."""
    bases = (L.Callback, L.LightningDataModule, L.LightningModule)
    found = []
    package = Path(checkpoint.__file__).parents[1]
    for module in pkgutil.walk_packages([str(package)], prefix="lit_linreg."):
        if module.name.rpartition(".")[2].startswith("_"):  # __main__ runs the CLI
            continue
        for _, cls in inspect.getmembers(importlib.import_module(module.name), inspect.isclass):
            ours = cls.__module__.startswith("lit_linreg.") and cls not in found
            if ours and (issubclass(cls, bases) or cls.__module__ == "lit_linreg.model.nets"):
                found.append(cls)
    return found


def test_every_integer_option_of_the_trainer_and_of_lit_linreg_has_a_range():
    classes = [L.Trainer, *configurable_classes()]
    assert {"FitFigure", "LastCheckpoint", "SyntheticDataModule", "LinearRegression", "MLP"} <= {
        cls.__name__ for cls in classes
    }
    unruled = [f"{cls.__name__}.{name}" for cls in classes for name in integer_parameters(cls)]
    unruled = [name for name in unruled if name.split(".")[1] not in constraints_of(_named(classes, name))]
    assert unruled == []
    assert len(integer_parameters(L.Trainer)) >= 18  # the enumeration finds the Trainer's options


def _named(classes: list[type], dotted: str) -> type:
    return next(cls for cls in classes if cls.__name__ == dotted.split(".")[0])


# (flag prefix, the arguments that choose the class, the class): every group a config can set integers in.
GROUPS = [
    ("trainer", [], L.Trainer),
    ("checkpoint", [], BestCheckpoint),
    ("last", [], LastCheckpoint),
    ("reference", [], LeastSquaresReference),
    ("coefficients", [], CoefficientLogger),
    ("figure", [], FitFigure),
    ("data", ["--config", config("synthetic.yaml")], SyntheticDataModule),
    ("data", ["--config", config("table.yaml")], TableDataModule),
    ("model.net", ["--model.net", "lit_linreg.model.nets.MLP"], MLP),
    ("lr_scheduler", ["--lr_scheduler", "StepLR", "--lr_scheduler.step_size", "1"], torch.optim.lr_scheduler.StepLR),
    ("optimizer", ["--optimizer", "LBFGS"], torch.optim.LBFGS),
]
OUT_OF_RANGE = (0, -1, -5, 2**63)  # a zero, negatives, one past int64


def out_of_range_cases() -> list:
    """(flag, value, arguments, the rule's message) for every integer option of GROUPS and every value it refuses."""
    cases = []
    for prefix, chooser, cls in GROUPS:
        taken = inspect.signature(cls.__init__).parameters
        for name, rule in constraints_of(cls).items():
            if name not in taken or name in ("in_features", "out_features"):  # the latter linked from the data
                continue
            for value in OUT_OF_RANGE:
                if not rule.allows(value):
                    listed = name in ("hidden", "milestones")
                    shown = f"[{value}]" if listed else str(value)
                    message = (
                        f"{'each of ' if listed else ''}{prefix}.{name} must be {rule.describe(value)}, got {shown}"
                    )
                    cases.append(
                        pytest.param(f"--{prefix}.{name}", shown, chooser, message, id=f"{prefix}.{name}={value}")
                    )
    return cases


def refused(args: list[str], tmp_path: Path, capsys) -> tuple[int, str]:
    capsys.readouterr()
    code = main(["fit", "--config", config("toy.yaml"), *args, *QUIET, "--trainer.default_root_dir", str(tmp_path)])
    return code, capsys.readouterr().err


def assert_one_line(err: str, message: str) -> None:
    assert "Traceback" not in err
    assert err.splitlines() == [f"lit-linreg: error: {message}"], err


def test_zero_negative_and_huge_values_are_checked_against_each_options_rule():
    rule = constraints_of(L.Trainer)["check_val_every_n_epoch"]
    assert [rule.allows(v) for v in (0, 1, 2**63 - 1, 2**63, -1)] == [False, True, True, False, False]
    assert rule.describe(0) == "at least 1 (or null for val_check_interval alone)"
    assert rule.describe(2**63) == "at most 2**63 - 1 (int64)"
    steps = constraints_of(L.Trainer)["max_steps"]
    assert [steps.allows(v) for v in (-2, -1, 0, 1)] == [False, True, False, True]
    assert steps.describe(0) == "at least 1, or -1 for no limit"
    # Inherited: BestCheckpoint takes ModelCheckpoint's rules, LastCheckpoint overrides one of them.
    assert constraints_of(BestCheckpoint)["every_n_train_steps"].allows(0)
    assert not constraints_of(LastCheckpoint)["every_n_train_steps"].allows(0)


# One flag per group in the fast suite: each is refused while parsing, before any class is built.
FIRST_OF_EACH_GROUP = list({case.values[0].rsplit(".", 1)[0]: case for case in out_of_range_cases()[::-1]}.values())


@pytest.mark.parametrize("flag, value, chooser, message", FIRST_OF_EACH_GROUP)
def test_an_out_of_range_integer_option_of_each_group_is_refused_in_one_line(
    flag, value, chooser, message, tmp_path, capsys
):
    code, err = refused([*chooser, flag, value], tmp_path, capsys)
    assert code == 2
    assert_one_line(err, message)
    assert not (tmp_path / "lightning_logs").exists()  # refused before any run directory
    record_fault("bad_inputs")


@pytest.mark.slow
@pytest.mark.parametrize("flag, value, chooser, message", out_of_range_cases())
def test_every_integer_option_out_of_range_is_refused_in_one_line(flag, value, chooser, message, tmp_path, capsys):
    code, err = refused([*chooser, flag, value], tmp_path, capsys)
    assert code == 2
    assert_one_line(err, message)
    record_fault("bad_inputs")


# --- Null config sections: an empty `model:` sets nothing, as an absent one ----------------------------------------


def test_a_null_data_section_is_reported_missing_in_one_line(tmp_path, capsys):
    (tmp_path / "null.yaml").write_text("data: null\nmodel:\n")
    capsys.readouterr()
    assert run("fit", "--config", str(tmp_path / "null.yaml"), root=tmp_path) == 2
    err = capsys.readouterr().err
    assert_one_line(err, "no data given (its section is missing or null): choose one with --data CLASS")


def test_every_config_section_null_runs_with_the_defaults(tmp_path, capsys):
    refused(["--figure.max_points", "0"], tmp_path, capsys)  # a first parse: the CLI lists its sections
    sections = sorted(cli._SECTIONS - {"data", "fit"})  # `fit` titles the subcommand's own options
    assert {"trainer", "model", "checkpoint", "last", "reference", "coefficients", "figure"} <= set(sections)
    data = "data:\n  class_path: lit_linreg.ToyDataModule\n  init_args: null\n"  # null arguments: the defaults too
    (tmp_path / "null.yaml").write_text("".join(f"{section}: null\n" for section in sections) + data)
    root = tmp_path / "runs"
    assert run("fit", "--config", str(tmp_path / "null.yaml"), "--trainer.max_epochs", "1", *FAST, root=root) == 0
    saved = yaml.safe_load((root / "lightning_logs" / "version_0" / "config.yaml").read_text())
    assert saved["model"]["init_args"]["lr"] == 0.01  # LinearRegression's defaults
    assert saved["checkpoint"]["monitor"] == "val/loss"  # the CLI's defaults of the callback groups
    assert saved["coefficients"]["max_scalars"] == 64
    assert saved["trainer"]["log_every_n_steps"] is None and saved["optimizer"] is None


# --- Targets in another unit: metrics exact in float64 at any scale -------------------------------------------------

SCALES = [1e-20, 1e-10, 1.0, 1e10, 1e20]


@pytest.mark.parametrize("offset", [0.0, 1e9], ids=["centred", "far-from-0"])
def test_r2_is_the_same_at_every_scale_of_the_targets(offset):
    generator = torch.Generator().manual_seed(0)
    y = torch.randn(300, 2, generator=generator, dtype=torch.float64)
    predicted = y + 0.3 * torch.randn(300, 2, generator=generator, dtype=torch.float64)
    exact = (1 - (y - predicted).square().sum(0) / (y - y.mean(0)).square().sum(0)).mean().item()
    for scale in SCALES:
        r2 = R2()
        for rows in torch.arange(300).split(64):  # batches, merged as validation merges them
            r2.update(predicted[rows] * scale + offset * scale, y[rows] * scale + offset * scale)
        assert r2.compute().item() == pytest.approx(exact, rel=1e-6), scale  # torchmetrics gave 1.0 at 1e-20


def test_r2_of_a_constant_target_is_1_for_an_exact_fit_and_0_otherwise():
    for scale in SCALES:
        ones = torch.full((4, 1), scale, dtype=torch.float64)
        r2 = R2()
        r2.update(ones, ones)
        assert r2.compute().item() == 1.0
        r2.reset()
        r2.update(2 * ones, ones)
        assert r2.compute().item() == 0.0


def test_targets_near_1e20_log_a_finite_exact_val_loss_and_say_tensorboard_cannot_hold_it(tmp_path, monkeypatch):
    said = []
    monkeypatch.setattr(metrics, "rank_zero_info", said.append)  # whatever the logging setup of the session
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(200, 2, generator=generator, dtype=torch.float64)
    y = (x @ torch.tensor([2.0, -1.0], dtype=torch.float64) + 0.5 + torch.randn(200, generator=generator)) * 1e20
    table = tmp_path / "grams.csv"
    table.write_text(
        "a,b,y\n" + "".join(f"{a!r},{b!r},{t!r}\n" for (a, b), t in zip(x.tolist(), y.tolist(), strict=True))
    )
    args = ["fit", "--data", "TableDataModule", "--data.path", str(table), "--data.targets", "[y]", *FAST]
    fitted = cli_main([*args, "--trainer.max_epochs", "2", *QUIET, "--trainer.default_root_dir", str(tmp_path)])
    logged = fitted.trainer.callback_metrics
    x_val, y_val = fitted.datamodule.splits["val"][:2]
    with torch.no_grad():
        error = fitted.model(x_val).double().flatten() - y_val.double().flatten()
    assert logged["val/loss"].item() == pytest.approx(error.square().mean().item(), rel=1e-6)  # about 1e40
    assert torch.isfinite(logged["val/loss"]) and logged["val/loss"].item() > 1e38
    assert -1 < logged["val/r2"].item() < 1
    assert len(said) == 1 and said[0].startswith("val/loss is ")  # one line, once
    assert "beyond float32 (TensorBoard's scalar type): its TensorBoard chart shows inf" in said[0]
