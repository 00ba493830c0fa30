"""Trust: no traceback where one line is promised, no silent wrong answer, no lost run.

`test_refused_in_one_line` runs one case per probe (values the Trainer rejects, configs that name code,
checkpoints that must not be used, questions asked without a checkpoint) through `main` in this process.
The other tests inject one fault each: runs racing for a directory, a full or read-only disk, SIGTERM,
a non-finite buffer; and check the optimizer conventions (`--optimizer`, `--lr_scheduler`, exact resume).
"""

from __future__ import annotations

import hashlib
import shutil
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from lit_linreg.checkpoint import find_last, load_checkpoint
from lit_linreg.cli import main
from tests.conftest import QUIET, config, record_fault

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
    # --- checkpoints that must not be used ----------------------------------------------------------------------
    pytest.param(
        edited_checkpoint(lambda c: c["state_dict"]["linear.weight"].fill_(float("nan"))),
        ["predict", *TOY, *EDITED],
        ["{tmp}/edited.ckpt: refused: non-finite values (NaN or inf) in linear.weight"],
        2,
        id="ckpt-nan-weight",
    ),
    pytest.param(
        edited_checkpoint(lambda c: c["state_dict"]["y_std"].fill_(float("inf"))),
        ["predict", *TOY, *EDITED],
        ["non-finite values (NaN or inf) in y_std"],
        2,
        id="ckpt-inf-buffer",
    ),
    pytest.param(
        edited_checkpoint(lambda c: c["state_dict"].pop("y_std")),
        ["predict", *TOY, *EDITED],
        ["{tmp}/edited.ckpt: does not fit this model: its state_dict lacks y_std"],
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
        ["--ckpt_path last: no run under {tmp}/runs trained on this data; found", "(ToyDataModule())"],
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
    # --- run directories that cannot be written -----------------------------------------------------------------
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
    record_fault("hangs" if any(k in str(argv) for k in ("laughs", "num_nodes")) else "refusals")
