"""Shared fixtures: every CLI run goes to its own tmp_path, on the CPU, quietly."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from lit_linreg.cli.main import main

ROOT = Path(__file__).resolve().parents[1]
QUIET = ["--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false"]


@pytest.fixture
def run_cli(tmp_path):
    """Run `python -m lit_linreg ARGS` in this process with the run directory in tmp_path; returns the exit code."""

    def run(*args: str, root: Path | None = None) -> int:
        root_dir = ["--trainer.default_root_dir", str(root or tmp_path / "runs")]
        return main([*args, *QUIET, *root_dir])

    return run


@pytest.fixture
def run_process(tmp_path):
    """Run `python -m lit_linreg ARGS` as a separate process; returns the CompletedProcess."""

    def run(*args: str, root: Path | None = None, timeout: float = 120, env: dict | None = None):
        root_dir = ["--trainer.default_root_dir", str(root or tmp_path / "runs")]
        env = {**os.environ, "PYTHONPATH": str(ROOT), **(env or {})}
        env.pop("LIT_LINREG_DEBUG", None)
        cmd = [sys.executable, "-m", "lit_linreg", *args, *QUIET, *root_dir]
        return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)

    return run


def quiet_trainer(max_epochs: int, **overrides):
    """A Trainer for in-process tests: on the CPU, nothing logged, checkpointed or printed."""
    import lightning as L

    settings = dict(
        max_epochs=max_epochs,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    return L.Trainer(**(settings | overrides))


def config(name: str) -> str:
    return str(ROOT / "configs" / name)


def latest_version(root: Path) -> Path:
    return max((root / "lightning_logs").glob("version_*"), key=lambda p: int(p.name.split("_")[1]))


def scalars(run_dir: Path) -> dict[str, list[tuple[int, float]]]:
    """Every scalar in a run's TensorBoard event files: tag -> [(step, value), ...]."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run_dir), size_guidance={"scalars": 0})
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


# --- Fault report ------------------------------------------------------------------------------------------------
# How many faults the suite tried, for the README's table: tests call record_fault(kind) with one of FAULTS' kinds.
# "lost" counts saved work found lost (a changed file, a weight that differs after resume); the tests assert it
# stays 0. When LIT_LINREG_FAULT_REPORT names a file, the counts are written there as a Markdown table at the end
# of the session (`make faults`).

FAULTS = {
    "bad_inputs": "bad inputs (files, columns, flags, configs, checkpoints), each refused with one line",
    "random_csvs": "random CSV texts (hypothesis): loaded exactly or refused with one line",
    "kills": "SIGKILLs (mid-epoch, mid-checkpoint-write, at random times) and SIGHUP, SIGUSR1, SIGUSR2 of"
    " training runs, each resumed",
    "failed_writes": "checkpoint writes failed before the rename",
    "divergences": "runs stopped at a non-finite loss or state (nothing non-finite is saved)",
    "refusals": "unsafe configs, values the Trainer rejects, checkpoints with NaN, other tensors or of another"
    " experiment, questions asked without a checkpoint: each refused with one line",
    "hangs": "inputs that used to hang or crash (YAML aliases, 50,000 nested brackets, num_nodes without a launcher),"
    " refused within seconds",
    "disk_faults": "full disks (ENOSPC) and unwritable run directories: one line, nothing half-written",
    "sigterms": "SIGTERMs and Ctrl-Cs at each moment of a run: exit 143 or 130 in one line naming the last.ckpt"
    " left, which resumes bit for bit",
    "races": "runs started together into one directory, each given its own",
    "lost": "saved files changed or weights that differ after a resume (must be 0)",
}
_fault_counts: dict[str, int] = dict.fromkeys(FAULTS, 0)


def record_fault(kind: str, n: int = 1) -> None:
    """Add `n` to the session's count of faults of `kind`, one of FAULTS."""
    assert kind in FAULTS, kind
    _fault_counts[kind] += n


@pytest.fixture(scope="session", autouse=True)
def fault_report():
    """Write the fault counts to $LIT_LINREG_FAULT_REPORT, if set, once every test has run."""
    yield
    if path := os.environ.get("LIT_LINREG_FAULT_REPORT"):
        rows = [f"| {FAULTS[kind]} | {count} |" for kind, count in _fault_counts.items()]
        Path(path).write_text("\n".join(["| fault injected | count |", "|---|---|", *rows]) + "\n")
