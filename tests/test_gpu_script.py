"""benchmarks/gpu.py, the check a GPU machine runs, run here on the CPU so that it is ready when one is lent."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest

from tests.conftest import ROOT


@pytest.mark.slow  # five fits, a predict on each side and a server: about a minute
def test_the_gpu_script_runs_on_the_cpu_and_finds_the_cpus_own_predictions_equal():
    small = ["--rows", "16384", "--table-rows", "16384", "--requests", "20", "--epochs", "2"]
    command = [sys.executable, str(ROOT / "benchmarks" / "gpu.py"), "--accelerator", "cpu", *small]
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, (done.stdout + done.stderr)[-3000:]
    assert "predictions equal the CPU's to 1e-05 relative: yes" in done.stdout
    difference = re.search(r"\| predict on cpu vs the CPU, 4,096 rows \| (\S+) \|", done.stdout)
    assert difference and float(difference.group(1)) == 0.0  # the same device: the same numbers, bit for bit
    epochs = re.findall(
        r"\| full-batch fit, qr, float(?:32|64) rows, 16,384 x 32 \| \S+ s \| (\d+) epochs \|", done.stdout
    )
    assert len(epochs) == 2 and all(1 <= int(e) <= 20 for e in epochs)
    assert re.search(r"\| serve, one row a request, one connection \| \d+ req/s \| median \S+ ms \| ok \|", done.stdout)
