"""Benchmark `serve`: single-row requests from 8 concurrent clients, batching on against batching off.

configs/table.yaml (houses.csv, with its `neighbourhood` column one-hot encoded) is trained briefly into a
temporary directory; two servers of that checkpoint start on free loopback ports, one with the default
`--max_batch_size 64` and the baseline with `--max_batch_size 1`, each LitServe's one inference worker.
Each repeat sends, to each server in turn (the order alternating between repeats, so a slow spell on a
shared machine falls on both), `--requests` POST /predict requests of one row each from 8 client threads,
each thread on a keep-alive connection of its own: requests per second over the whole round, and the p50
and p99 of the requests' latencies. Every figure is the median over `--repeats` rounds; each ratio the
median over the repeats of the ratio between the two rounds made back to back. Requests go to 127.0.0.1 only.

Usage: `make bench` runs it after bench.py; or `python benchmarks/serve.py --repeats 5`.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import platform
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from importlib.metadata import version
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CLIENTS = 8
QUIET = ["--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false"]
TRAIN = ["--config", "configs/table.yaml", "--data.categorical", "[neighbourhood]", "--trainer.max_epochs", "30"]
ROW = {"neighbourhood": "North", "area_m2": 120.0, "rooms": 4, "age_years": 20, "distance_km": 8.5}


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def start_server(args: list[str], max_batch_size: int) -> tuple[subprocess.Popen, int]:
    """A `serve` process on a free port, once /health answers."""
    port = _free_port()
    cmd = [sys.executable, "-m", "lit_linreg", "serve", *args, "--port", str(port)]
    process = subprocess.Popen(
        [*cmd, "--max_batch_size", str(max_batch_size)],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,  # its own process group: stopping it stops LitServe's workers too
    )
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"serve exited with code {process.returncode}: {' '.join(cmd)}")
        try:
            connection = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
            connection.request("GET", "/health")
            if connection.getresponse().read() == b"ok":
                return process, port
        except OSError:
            time.sleep(0.5)
    stop(process)
    raise SystemExit("serve did not answer /health within 300 s")


def stop(process: subprocess.Popen) -> None:
    os.killpg(process.pid, signal.SIGINT)
    try:
        process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()


def load(port: int, requests: int) -> dict[str, float]:
    """`requests` single-row POSTs from CLIENTS threads: requests/s over the round, p50 and p99 latency in ms."""
    body = json.dumps({"rows": [ROW]}).encode()
    headers = {"Content-Type": "application/json"}
    latencies: list[list[float]] = [[] for _ in range(CLIENTS)]
    failures: list[str] = []

    def client(i: int) -> None:
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        for _ in range(requests // CLIENTS):
            start = time.perf_counter()
            connection.request("POST", "/predict", body, headers)
            response = connection.getresponse()
            answer = response.read()
            latencies[i].append(time.perf_counter() - start)
            if response.status != 200:
                failures.append(answer.decode())
        connection.close()

    threads = [threading.Thread(target=client, args=(i,)) for i in range(CLIENTS)]
    start = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    elapsed = time.perf_counter() - start
    if failures:
        raise SystemExit(f"{len(failures)} requests failed, the first: {failures[0]}")
    every = sorted(t for client in latencies for t in client)
    return {
        "rps": len(every) / elapsed,
        "p50": 1000 * every[len(every) // 2],
        "p99": 1000 * every[min(len(every) - 1, int(len(every) * 0.99))],
    }


def table(runs: list[dict[str, dict[str, float]]]) -> str:
    """The markdown rows: medians of each figure, and the median over the repeats of batched / baseline."""

    def median(variant: str, key: str) -> float:
        return statistics.median(r[variant][key] for r in runs)

    def ratio(key: str) -> float:
        return statistics.median(r["batched"][key] / r["baseline"][key] for r in runs)

    what = f"serve, 1-row requests from {CLIENTS} clients; baseline: --max_batch_size 1"
    rows = [
        (f"{what}: requests/s", "rps", ">= 1.0x", lambda v: v >= 1.0),
        ("serve: p50 latency, ms", "p50", "<= 1.0x", lambda v: v <= 1.0),
        ("serve: p99 latency, ms", "p99", "<= 1.0x", lambda v: v <= 1.0),
    ]
    lines = ["| measure | lit_linreg | baseline | ratio | target | met |", "|---|---|---|---|---|---|"]
    for measure, key, target, met in rows:
        ours, baseline, value = median("batched", key), median("baseline", key), ratio(key)
        lines.append(
            f"| {measure} | {ours:.1f} | {baseline:.1f} | {value:.2f}x | {target} | {'yes' if met(value) else 'no'} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3, help="rounds against each server; figures are medians")
    parser.add_argument("--requests", type=int, default=2000, help="requests a round, over the 8 clients")
    parser.add_argument("--max_batch_size", type=int, default=64, help="the batched server's")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        serve_args = [*TRAIN, *QUIET, "--trainer.default_root_dir", tmp]
        subprocess.run(
            [sys.executable, "-m", "lit_linreg", "fit", *serve_args], cwd=ROOT, check=True, capture_output=True
        )
        servers = {}
        try:
            for variant, size in (("batched", args.max_batch_size), ("baseline", 1)):
                servers[variant] = start_server([*serve_args, "--ckpt_path", "last"], size)
            for _, port in servers.values():
                load(port, 200)  # warm-up: connections, first-call paths
            runs = []
            for i in range(args.repeats):
                order = ["batched", "baseline"] if i % 2 == 0 else ["baseline", "batched"]
                runs.append({variant: load(servers[variant][1], args.requests) for variant in order})
                print(f"repeat {i + 1}/{args.repeats}: {runs[-1]}", file=sys.stderr, flush=True)
        finally:
            for process, _ in servers.values():
                stop(process)
    print(f"\nMachine: {platform.platform()}, {os.cpu_count()} CPUs, Python {platform.python_version()},", end=" ")
    print(f"torch {version('torch')}, litserve {version('litserve')}. configs/table.yaml's model; {args.requests}")
    print(f"requests a round; figures: medians of {args.repeats} interleaved rounds; ratio: batched / baseline.\n")
    print(table(runs))


if __name__ == "__main__":
    main()
