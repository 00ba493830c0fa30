"""Two nodes on one host: two torchrun launchers, one process each, as two machines would start them."""

from __future__ import annotations

import os
import socket
import subprocess
import sys

import pytest
import torch

from tests.conftest import QUIET, ROOT, config, latest_version


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def last_weight(root) -> float:
    checkpoint = torch.load(latest_version(root) / "checkpoints" / "last.ckpt", weights_only=True)
    return checkpoint["state_dict"]["net.weight"].item()


@pytest.mark.slow  # two launchers, each starting Lightning: about 30 s
def test_two_torchrun_nodes_on_gloo_reach_the_single_process_weights(run_cli, tmp_path):
    assert run_cli("fit", "--config", config("toy.yaml"), root=tmp_path / "single") == 0
    port, env = free_port(), {**os.environ, "PYTHONPATH": str(ROOT)}
    fit = ["-m", "lit_linreg", "fit", "--config", config("toy.yaml"), *QUIET]
    ddp = ["--trainer.strategy", "ddp", "--trainer.accelerator", "cpu", "--trainer.devices", "1"]
    launchers = [
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "torch.distributed.run",
                "--nnodes",
                "2",
                "--nproc_per_node",
                "1",
                "--node_rank",
                str(node),
                "--master_addr",
                "127.0.0.1",
                "--master_port",
                str(port),
                *fit,
                *ddp,
                "--trainer.num_nodes",
                "2",
                "--trainer.default_root_dir",
                str(tmp_path / "two_nodes"),
            ],
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )  # fmt: skip
        for node in (0, 1)
    ]
    try:
        outputs = [launcher.communicate(timeout=300)[0] for launcher in launchers]
    finally:
        for launcher in launchers:
            launcher.kill()
    assert [launcher.returncode for launcher in launchers] == [0, 0], outputs[0][-3000:] + outputs[1][-3000:]
    assert "Starting with 2 processes" in outputs[0]  # one world of two, not two worlds of one
    assert last_weight(tmp_path / "two_nodes") == pytest.approx(last_weight(tmp_path / "single"), abs=1e-5)
    assert last_weight(tmp_path / "two_nodes") == pytest.approx(2.0, abs=1e-4)
