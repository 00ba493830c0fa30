"""The GPU check: lit_linreg on one accelerator against a bare LightningModule there, and against the CPU's answers.

    python benchmarks/gpu.py                        # on a machine with a GPU: --accelerator cuda
    python benchmarks/gpu.py --accelerator cpu --rows 65536 --table-rows 65536 --requests 50   # anywhere (tests)

In one scratch directory, each a fresh process, on `--accelerator`:
1. epoch: `fit --config configs/synthetic.yaml` (mini-batches of 8192) against `bare_lightning.py`, a bare
   LightningModule fed the same batches from rows held on the same device; medians of the epochs after the first.
2. full batch, qr: `fit --config configs/table.yaml` as shipped on a Parquet table of `--table-rows` x 32
   (float32 rows): seconds and epochs to the stop rule.
3. float64 rows: the same with `--trainer.precision 64-true`.
4. predict: the fit of 2. predicts the first rows on the accelerator and on the CPU; the largest relative
   difference must be at most 1e-5.
5. serve: `serve` from the same checkpoint (a server on 127.0.0.1), one row a request over one keep-alive
   connection: requests/s and the median latency, its answer checked against the CPU's predict.
Prints a Markdown table, and exits 1 if any answer differs from the CPU's by more than 1e-5 relative.
"""

from __future__ import annotations

import argparse
import csv
import http.client
import json
import os
import re
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
TOLERANCE = 1e-5  # relative: what float32 arithmetic in another order may change


def run(args: list[str], env: dict[str, str], timeout: float = 1800) -> tuple[float, str]:
    """`python ARGS` in a fresh process from the checkout: its wall seconds and output; exits on failure."""
    start = time.perf_counter()
    done = subprocess.run([sys.executable, *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
    if done.returncode != 0:
        sys.exit(f"exit {done.returncode}: python {' '.join(args)}\n{(done.stdout + done.stderr)[-3000:]}")
    return time.perf_counter() - start, done.stdout + done.stderr


def epochs_after_first(output: str) -> float:
    seconds = json.loads(re.search(r"EPOCH_SECONDS (\[.*?\])", output).group(1))
    return statistics.median(seconds[1:] or seconds)


def newest_run(root: Path) -> Path:
    return max((root / "lightning_logs").glob("version_*"), key=lambda p: int(p.name.split("_")[1]))


def predictions(root: Path) -> list[float]:
    with open(newest_run(root) / "predictions.csv", newline="") as f:
        return [float(row[-1]) for row in list(csv.reader(f))[1:]]


def relative_difference(a: list[float], b: list[float]) -> float:
    assert len(a) == len(b) and a, (len(a), len(b))
    return max(abs(x - y) / max(abs(y), 1e-12) for x, y in zip(a, b, strict=True))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def serve(args: list[str], env: dict[str, str], row: dict, requests: int) -> tuple[float, float, float]:
    """Start `serve`, wait for /health, send `requests` one-row requests; (requests/s, median ms, first answer)."""
    port = free_port()
    command = [sys.executable, "-m", "lit_linreg", "serve", *args, "--port", str(port)]
    server = subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 180
        while True:
            if server.poll() is not None:
                sys.exit(f"serve exited {server.returncode}: {server.stderr.read().decode()[-2000:]}")
            try:
                connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
                connection.request("GET", "/health")
                health = connection.getresponse()
                health.read()  # the connection is reused for the requests: its answer read in full first
                if health.status == 200:
                    break
            except OSError:
                pass
            if time.monotonic() > deadline:
                sys.exit("serve: no /health 200 within 180 s")
            time.sleep(0.2)
        body = json.dumps({"rows": [row]})
        latencies, answer = [], None
        start = time.perf_counter()
        for _ in range(requests):
            sent = time.perf_counter()
            connection.request("POST", "/predict", body, {"Content-Type": "application/json"})
            response = connection.getresponse()
            payload = json.loads(response.read())
            latencies.append(time.perf_counter() - sent)
            if response.status != 200:
                sys.exit(f"serve answered {response.status}: {payload}")
            answer = answer if answer is not None else next(iter(payload["predictions"][0].values()))
        return requests / (time.perf_counter() - start), 1000 * statistics.median(latencies), answer
    finally:
        server.terminate()
        server.wait(timeout=60)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--accelerator", default="cuda", help="the accelerator to check (cuda, mps, cpu)")
    parser.add_argument("--rows", type=int, default=2_097_152, help="rows of the synthetic epoch benchmark")
    parser.add_argument("--table-rows", type=int, default=1_048_576, help="rows of the full-batch table")
    parser.add_argument("--epochs", type=int, default=5, help="epochs of the synthetic benchmark")
    parser.add_argument("--requests", type=int, default=500, help="one-row requests sent to `serve`")
    args = parser.parse_args()

    env = os.environ | {
        "PYTHONPATH": os.pathsep.join(filter(None, [str(HERE), str(ROOT), os.environ.get("PYTHONPATH")]))
    }
    on = ["--trainer.accelerator", args.accelerator, "--trainer.devices", "1"]
    quiet = ["--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false"]
    rows: list[tuple[str, str, str, str]] = []
    with tempfile.TemporaryDirectory() as scratch_dir:
        scratch = Path(scratch_dir)

        # 1. the epoch against a bare LightningModule on the same device
        synthetic = ["--config", "configs/synthetic.yaml", "--data.n_samples", str(args.rows)]
        synthetic += ["--trainer.max_epochs", str(args.epochs), "--trainer.callbacks+=epoch_timer.EpochTimer"]
        _, out = run(
            ["-m", "lit_linreg", "fit", *synthetic, *on, *quiet, "--trainer.default_root_dir", str(scratch / "e")], env
        )
        ours = epochs_after_first(out)
        bare_args = ["--n-samples", str(args.rows), "--epochs", str(args.epochs), "--accelerator", args.accelerator]
        _, out = run([str(HERE / "bare_lightning.py"), *bare_args], env)
        bare = epochs_after_first(out)
        rows.append(
            (
                "s/epoch, synthetic, batch 8192",
                f"{ours:.4g}",
                f"{bare:.4g} (bare LightningModule)",
                f"{ours / bare:.2f}x",
            )
        )

        # 2, 3. the full-batch preconditioned fit, float32 and float64 rows
        table = scratch / "table"
        run(
            [str(HERE / "write_parquet.py"), str(table), "--n-samples", str(args.table_rows), "--writer", "pyarrow"],
            env,
        )
        on_table = ["--config", "configs/table.yaml", "--data.path", str(table), "--data.targets", "[y]"]
        fit = ["-m", "lit_linreg", "fit", *on_table]
        fits = {}
        for name, extra in (("float32", []), ("float64", ["--trainer.precision", "64-true"])):
            root = scratch / name
            seconds, out = run([*fit, *on, *quiet, *extra, "--trainer.default_root_dir", str(root)], env)
            import torch  # here, not at the top: the figures above are taken without it in this process

            checkpoint = torch.load(
                newest_run(root) / "checkpoints" / "last.ckpt", weights_only=True, map_location="cpu"
            )
            gap = re.findall(r"relative gap[^\n]*?([0-9.]+e?-?[0-9]*)", out)
            fits[name] = root
            rows.append((f"full-batch fit, qr, {name} rows, {args.table_rows:,} x 32", f"{seconds:.2f} s",
                         f"{checkpoint['epoch'] + 1} epochs", f"gap {gap[-1] if gap else '?'}"))  # fmt: skip

        # 4. predictions on the accelerator against the CPU's
        sample = scratch / "sample"
        run([str(HERE / "write_parquet.py"), str(sample), "--n-samples", "4096", "--writer", "pyarrow"], env)
        ckpt = str(newest_run(fits["float32"]) / "checkpoints" / "last.ckpt")
        predict = [
            "-m",
            "lit_linreg",
            "predict",
            *on_table,
            "--data.predict_path",
            str(sample),
            "--ckpt_path",
            ckpt,
            *quiet,
        ]
        answers = {}
        for where in (args.accelerator, "cpu"):
            root = scratch / f"predict_{where}"
            run(
                [
                    *predict,
                    "--trainer.accelerator",
                    where,
                    "--trainer.devices",
                    "1",
                    "--trainer.default_root_dir",
                    str(root),
                ],
                env,
            )
            answers[where] = predictions(root)
        worst = relative_difference(answers[args.accelerator], answers["cpu"])
        rows.append(
            (
                f"predict on {args.accelerator} vs the CPU, 4,096 rows",
                f"{worst:.2e}",
                f"<= {TOLERANCE:g}",
                "ok" if worst <= TOLERANCE else "FAIL",
            )
        )

        # 5. serve from the same checkpoint
        import pyarrow.parquet as pq

        first = {k: v[0] for k, v in pq.read_table(sample).slice(0, 1).to_pydict().items() if k != "y"}
        served = [*on_table, "--ckpt_path", ckpt]
        per_second, median_ms, answer = serve(served, env, first, args.requests)
        off = abs(answer - answers["cpu"][0]) / max(abs(answers["cpu"][0]), 1e-12)
        rows.append(
            (
                "serve, one row a request, one connection",
                f"{per_second:.0f} req/s",
                f"median {median_ms:.2f} ms",
                "ok" if off <= TOLERANCE else f"FAIL ({off:.2e})",
            )
        )

    print(f"\nAccelerator: {args.accelerator}. Each figure one fresh process; ratios against the baseline beside it.\n")
    print("| measure | lit_linreg | baseline or bound | ratio or check |\n|---|---|---|---|")
    for row in rows:
        print("| " + " | ".join(row) + " |")
    failed = [row[0] for row in rows if "FAIL" in row[3]]
    print(f"\npredictions equal the CPU's to {TOLERANCE:g} relative: {'no: ' + ', '.join(failed) if failed else 'yes'}")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
