import os
import random
import signal
import subprocess
import sys
import time

import pytest
import torch

from lit_linreg.cli.checkpoint import AtomicCheckpointIO, find_last, load_checkpoint
from lit_linreg.cli.main import main
from tests.conftest import QUIET, ROOT, config, latest_version, record_fault

# 20,000 rows in batches of 1,000: 18 training steps an epoch, 12 epochs.
SYNTHETIC = [
    "fit",
    "--config",
    config("synthetic.yaml"),
    "--data.n_samples",
    "20000",
    "--data.batch_size",
    "1000",
    "--trainer.max_epochs",
    "12",
    "--model.momentum",
    "0.9",  # optimizer state must survive the resume too
    "--trainer.check_val_every_n_epoch",
    "1",  # a best-*.ckpt write in every epoch, as the kills inside checkpoint writes expect
]


def final_state(root) -> dict[str, torch.Tensor]:
    # The newest last.ckpt: a run resumed after the final epoch's checkpoint has nothing left to train or write.
    checkpoint = torch.load(find_last(root), weights_only=True)
    assert checkpoint["epoch"] == 11
    momentum = checkpoint["optimizer_states"][0]["state"]
    return checkpoint["state_dict"] | {f"momentum/{k}": v["momentum_buffer"] for k, v in momentum.items()}


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    root = tmp_path_factory.mktemp("uninterrupted")
    assert main([*SYNTHETIC, *QUIET, "--trainer.default_root_dir", str(root)]) == 0
    return final_state(root)


def test_two_runs_with_one_seed_give_bit_identical_weights(run_cli, tmp_path, uninterrupted):
    assert run_cli(*SYNTHETIC, root=tmp_path) == 0
    again = final_state(tmp_path)
    assert again.keys() == uninterrupted.keys()
    assert all(torch.equal(again[k], uninterrupted[k]) for k in again)


@pytest.mark.parametrize(
    "fault",
    [
        pytest.param(
            "tests.faults.KillInBatch --trainer.callbacks.epoch 3 --trainer.callbacks.batch 7", marks=pytest.mark.slow
        ),
        pytest.param(
            "tests.faults.KillInCheckpointWrite --trainer.callbacks.epoch 3 --trainer.callbacks.fsync 1",
            marks=pytest.mark.slow,
        ),
        pytest.param(
            "tests.faults.KillInCheckpointWrite --trainer.callbacks.epoch 3 --trainer.callbacks.fsync 3",
            marks=pytest.mark.slow,
        ),
    ],
    ids=["mid-epoch", "writing-best", "writing-last"],
)
def test_a_run_killed_after_epoch_3_resumes_to_bit_identical_weights(
    run_process, run_cli, tmp_path, uninterrupted, fault
):
    callback, *args = fault.split()
    killed = run_process(*SYNTHETIC, "--trainer.callbacks+", callback, *args, root=tmp_path)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    record_fault("kills")
    assert "Seed set to 0" in killed.stderr  # the seed is printed ...
    assert "seed_everything: 0" in (latest_version(tmp_path) / "config.yaml").read_text()  # ... and saved
    checkpoints = latest_version(tmp_path) / "checkpoints"
    assert load_checkpoint(checkpoints / "last.ckpt")["epoch"] == 2  # 3 epochs done (counted from 0), never half
    for path in checkpoints.glob("*.ckpt"):
        load_checkpoint(path)  # every checkpoint on disk loads: the old file or the new one

    assert run_cli(*SYNTHETIC, "--ckpt_path", "last", root=tmp_path) == 0
    resumed = final_state(tmp_path)
    record_fault("lost", sum(not torch.equal(resumed[k], uninterrupted[k]) for k in uninterrupted))
    assert all(torch.equal(resumed[k], uninterrupted[k]) for k in uninterrupted)


def test_a_run_killed_mid_epoch_resumes_from_the_mid_epoch_last_checkpoint_bit_for_bit(
    run_process, run_cli, tmp_path, uninterrupted
):
    every = ("--last.every_n_train_steps", "5")
    kill = ("--trainer.callbacks+", "tests.faults.KillInBatch", "--trainer.callbacks.epoch", "3")
    killed = run_process(*SYNTHETIC, *every, *kill, "--trainer.callbacks.batch", "12", root=tmp_path)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    record_fault("kills")
    checkpoint = load_checkpoint(latest_version(tmp_path) / "checkpoints" / "last.ckpt")
    # Epoch 3 began at step 54; steps 55, 60 and 65 wrote last.ckpt, the last of them after batch 10 of 18.
    assert (checkpoint["epoch"], checkpoint["global_step"]) == (3, 65)
    assert checkpoint["loops"]["fit_loop"]["state_dict"]["combined_loader"] == [{"epoch": 3, "batches": 11}]

    assert run_cli(*SYNTHETIC, *every, "--ckpt_path", "last", root=tmp_path) == 0
    resumed = final_state(tmp_path)
    record_fault("lost", sum(not torch.equal(resumed[k], uninterrupted[k]) for k in uninterrupted))
    assert all(torch.equal(resumed[k], uninterrupted[k]) for k in uninterrupted)


def test_divergence_stops_at_the_first_non_finite_loss_and_keeps_the_last_finite_checkpoint(run_cli, tmp_path, capsys):
    assert run_cli("fit", "--config", config("toy.yaml"), "--model.lr", "10", root=tmp_path) == 1
    record_fault("divergences")
    assert "the training loss became inf at epoch 9, step 9" in capsys.readouterr().err
    checkpoint = load_checkpoint(latest_version(tmp_path) / "checkpoints" / "last.ckpt")
    assert (checkpoint["epoch"], checkpoint["global_step"]) == (8, 9)  # the state just before the bad step
    assert all(torch.isfinite(t).all() for t in checkpoint["state_dict"].values())


def test_resuming_takes_the_configured_lr_and_refuses_another_model(run_cli, tmp_path, capsys):
    toy = ("fit", "--config", config("toy.yaml"))
    assert run_cli(*toy, "--trainer.max_epochs", "2", root=tmp_path) == 0
    assert run_cli(*toy, "--trainer.max_epochs", "4", "--model.lr", "0.02", "--ckpt_path", "last", root=tmp_path) == 0
    checkpoint = load_checkpoint(latest_version(tmp_path) / "checkpoints" / "last.ckpt")
    assert checkpoint["epoch"] == 3
    assert checkpoint["hyper_parameters"]["lr"] == checkpoint["optimizer_states"][0]["param_groups"][0]["lr"] == 0.02

    assert run_cli(*toy, "--model.bias", "true", "--ckpt_path", "last", root=tmp_path) == 2
    assert "model.bias is false in the checkpoint but true here" in capsys.readouterr().err


def test_a_failed_write_keeps_the_old_file_and_leaves_no_temporary_file(tmp_path, monkeypatch):
    io = AtomicCheckpointIO()
    path = tmp_path / "last.ckpt"
    checkpoint = {"pytorch-lightning_version": "2.6.6", "state_dict": {"w": torch.tensor([1.0])}}
    io.save_checkpoint(checkpoint, path)
    before = path.read_bytes()

    def crash(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(OSError, match="disk full"):
        io.save_checkpoint(checkpoint | {"state_dict": {"w": torch.tensor([2.0])}}, path)
    record_fault("failed_writes")
    assert path.read_bytes() == before
    assert os.listdir(tmp_path) == ["last.ckpt"]
    assert torch.equal(io.load_checkpoint(path)["state_dict"]["w"], torch.tensor([1.0]))


def test_a_normal_run_leaves_no_temporary_files(run_cli, tmp_path):
    args = ("--trainer.max_epochs", "3", "--trainer.check_val_every_n_epoch", "1")
    assert run_cli("fit", "--config", config("toy.yaml"), *args, root=tmp_path) == 0
    names = sorted(p.name for p in (latest_version(tmp_path) / "checkpoints").iterdir())
    assert names == ["best-002.ckpt", "last.ckpt"]  # no .tmp file left behind


@pytest.mark.slow
def test_random_kills_from_outside_never_change_the_final_weights(tmp_path, uninterrupted):
    """SIGKILL at 8 random moments (start-up, training, checkpoint writes), resuming after each, then finish."""
    rng, kills = random.Random(0), 0
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    command = [sys.executable, "-m", "lit_linreg", *SYNTHETIC, *QUIET, "--trainer.default_root_dir"]
    began = time.perf_counter()  # how long a whole run takes on this machine: the kills land within it
    subprocess.run([*command, str(tmp_path / "timed")], cwd=ROOT, env=env, capture_output=True, check=True)
    seconds = time.perf_counter() - began
    command.append(str(tmp_path / "killed"))
    for attempt in range(9):
        resume = ["--ckpt_path", "last"] if any((tmp_path / "killed").rglob("last.ckpt")) else []
        process = subprocess.Popen([*command, *resume], cwd=ROOT, env=env, stderr=subprocess.PIPE)
        if attempt < 8:
            time.sleep(rng.uniform(0.1, 0.9) * seconds)
            process.send_signal(signal.SIGKILL)
        stderr = process.communicate(timeout=300)[1].decode()
        if process.returncode == 0:
            break
        assert process.returncode == -signal.SIGKILL, stderr[-2000:]
        record_fault("kills")
        kills += 1
    assert process.returncode == 0 and kills >= 4  # most kills land before the run ends
    resumed = final_state(tmp_path / "killed")
    record_fault("lost", sum(not torch.equal(resumed[k], uninterrupted[k]) for k in uninterrupted))
    assert all(torch.equal(resumed[k], uninterrupted[k]) for k in uninterrupted)


def test_best_checkpoint_keeps_model_checkpoints_state_key_and_its_step_trigger():
    from lightning.pytorch.callbacks import ModelCheckpoint

    from lit_linreg.cli.checkpoint import BestCheckpoint

    for kwargs in ({"monitor": "val/loss"}, {"monitor": "val/loss", "every_n_train_steps": 3}):
        assert BestCheckpoint(**kwargs).state_key == ModelCheckpoint(**kwargs).state_key
    saved = []

    class Recording(BestCheckpoint):
        def _save_topk_checkpoint(self, trainer, monitor_candidates):
            saved.append(trainer.global_step)

    class Trainer:  # what ModelCheckpoint reads at a batch end, at global steps 1..6
        fast_dev_run, sanity_checking, callback_metrics, current_epoch = False, False, {}, 0
        state = type("State", (), {"fn": "fit"})()
        strategy = None

    module = type("Module", (), {"automatic_optimization": True})()
    for every in (0, 3):
        callback, trainer = Recording(every_n_train_steps=every), Trainer()
        callback._save_last_checkpoint = lambda *args: None
        for step in range(1, 7):
            trainer.global_step = step
            callback.on_train_batch_end(trainer, module, None, None, step - 1)
    assert saved == [3, 6]  # none with no trigger; every third step with every_n_train_steps 3
