"""Benchmark `serve` against a bare LitServe API serving the same linear layer: memory, start-up, throughput, latency.

configs/table.yaml (houses.csv, its four numeric features) is trained briefly into a temporary directory. Each
repeat starts, in turn (the order alternating between repeats, so a slow spell on a shared machine falls on both),
`python -m lit_linreg serve` of that checkpoint and benchmarks/bare_litserve.py, an `nn.Linear` holding the same
coefficients, each on a free loopback port with the same `--workers`, `max_batch_size` 64 and `batch_timeout` 0.
For each server: the seconds from its start to the first `GET /health` answering 200; then `--requests` POST
/predict requests of one row each, the same JSON body, from 8 client threads, each on a keep-alive connection of
its own (requests per second over the round, the p99 of the latencies); then the resident memory (RSS) summed
over the server's whole process group (Linux's /proc). Each figure is the median over the repeats; each ratio the
median over the repeats of ours / bare (ready time: ours - bare). Requests go to 127.0.0.1 only. With
`--two-steps`, each repeat also serves the same model through `serve`'s two steps in turn (the CLI's `main`, as a
program that imports it runs it: the model resolved, then the server started), its ready time compared the same way.

Usage: `make bench` runs it last; or `python benchmarks/serve.py --repeats 5 --workers 2`.
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
TRAIN = ["--config", "configs/table.yaml", "--trainer.max_epochs", "30", "--figure.enabled", "false"]
ROW = {"area_m2": 120.0, "rooms": 4, "age_years": 20, "distance_km": 8.5}
GOALS = {  # measure: (how the ratio is written, goal, whether it is met)
    "rss": ("{:.2f}x", "<= 1.2x", lambda v: v <= 1.2),
    "ready": ("{:+.2f} s", "<= +1 s", lambda v: v <= 1.0),
    "rps": ("{:.2f}x", ">= 1.0x", lambda v: v >= 1.0),
    "p99": ("{:.2f}x", "<= 1.1x", lambda v: v <= 1.1),
}


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def start(cmd: list[str], port: int) -> tuple[subprocess.Popen, float]:
    """`cmd` in a process group of its own; returns it and the seconds until /health answered 200."""
    began = time.perf_counter()
    process = subprocess.Popen(
        cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
    )
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"exited with code {process.returncode}: {' '.join(cmd)}")
        try:
            connection = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
            connection.request("GET", "/health")
            if connection.getresponse().status == 200:
                return process, time.perf_counter() - began
        except OSError:
            time.sleep(0.02)
    stop(process)
    raise SystemExit(f"no answer on /health within 300 s: {' '.join(cmd)}")


def stop(process: subprocess.Popen) -> None:
    os.killpg(process.pid, signal.SIGINT)
    try:
        process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()


def group_rss_mb(pgid: int) -> tuple[float, int]:
    """The resident memory of every process in group `pgid`, summed, in MB; and how many processes."""
    total, count = 0, 0
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if int((entry / "stat").read_text().rsplit(")", 1)[1].split()[2]) != pgid:
                continue
            status = (entry / "status").read_text()
        except (OSError, IndexError):
            continue  # ended meanwhile
        total += next((int(line.split()[1]) for line in status.splitlines() if line.startswith("VmRSS:")), 0)
        count += 1
    return total / 1024, count


def load(port: int, requests: int) -> dict[str, float]:
    """`requests` single-row POSTs from CLIENTS threads: requests/s over the round, p99 latency in ms."""
    body = json.dumps({"rows": [ROW]}).encode()
    headers = {"Content-Type": "application/json"}
    latencies: list[list[float]] = [[] for _ in range(CLIENTS)]
    failures: list[str] = []

    def client(i: int) -> None:
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        for _ in range(requests // CLIENTS):
            began = time.perf_counter()
            connection.request("POST", "/predict", body, headers)
            response = connection.getresponse()
            answer = response.read()
            latencies[i].append(time.perf_counter() - began)
            if response.status != 200:
                failures.append(answer.decode())
        connection.close()

    threads = [threading.Thread(target=client, args=(i,)) for i in range(CLIENTS)]
    began = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    elapsed = time.perf_counter() - began
    if failures:
        raise SystemExit(f"{len(failures)} requests failed, the first: {failures[0]}")
    every = sorted(t for client in latencies for t in client)
    return {"rps": len(every) / elapsed, "p99": 1000 * every[min(len(every) - 1, int(len(every) * 0.99))]}


def measure(cmd: list[str], port: int, requests: int) -> dict[str, float]:
    """One server's round: ready time, throughput and p99 under load, then its group's memory."""
    process, ready = start(cmd, port)
    try:
        load(port, 200)  # warm-up: connections, first-call paths
        figures = load(port, requests)
        figures["rss"], figures["processes"] = group_rss_mb(process.pid)
    finally:
        stop(process)
    return {**figures, "ready": ready}


def coefficients(serve_args: list[str]) -> dict:
    """The trained model's W and b in original units, for the bare server's `nn.Linear`."""
    from lit_linreg.deploy.serve_cli import servable  # Lightning, in this process only

    reduced = servable([*serve_args, "--port", str(_free_port())])
    predictor = reduced.predictor
    return {
        "features": reduced.schema["features"],
        "weight": predictor.weight.tolist(),
        "bias": predictor.bias.tolist(),
        "names": reduced.names,
    }


def table(runs: list[dict[str, dict[str, float]]], workers: int) -> str:
    def median(variant: str, key: str) -> float:
        return statistics.median(r[variant][key] for r in runs)

    def ratio(key: str) -> float:
        if key == "ready":
            return statistics.median(r["ours"][key] - r["bare"][key] for r in runs)
        return statistics.median(r["ours"][key] / r["bare"][key] for r in runs)

    processes = int(median("ours", "processes")), int(median("bare", "processes"))
    measures = {
        "rss": f"RSS of the process group after the load, MB ({processes[0]} and {processes[1]} processes)",
        "ready": "ready: start to the first /health 200, s",
        "rps": f"requests/s, 1-row requests from {CLIENTS} clients",
        "p99": "p99 latency, ms",
    }
    lines = [
        f"| serve, --workers {workers} | lit_linreg | bare LitServe | ratio | goal | met |",
        "|---|---|---|---|---|---|",
    ]
    for key, measure in measures.items():
        written, goal, met = GOALS[key]
        value = ratio(key)
        lines.append(
            f"| {measure} | {median('ours', key):.1f} | {median('bare', key):.1f} | {written.format(value)} | {goal}"
            f" | {'yes' if met(value) else 'no'} |"
        )
    if "two steps" in runs[0]:
        value = statistics.median(r["two steps"]["ready"] - r["bare"]["ready"] for r in runs)
        lines.append(
            f"| ready, the two steps in turn (`lit_linreg.cli.main.main`), s | {median('two steps', 'ready'):.1f}"
            f" | {median('bare', 'ready'):.1f} | {value:+.2f} s | <= +1 s | {'yes' if value <= 1.0 else 'no'} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3, help="rounds against each server; figures are medians")
    parser.add_argument("--requests", type=int, default=2000, help="requests a round, over the 8 clients")
    parser.add_argument("--workers", type=int, default=1, help="inference workers of each server")
    parser.add_argument("--two-steps", action="store_true", help="also serve through serve's two steps in turn")
    args = parser.parse_args()
    if not Path("/proc/self/stat").exists():
        raise SystemExit("benchmarks/serve.py reads process memory from /proc: Linux only")
    with tempfile.TemporaryDirectory() as tmp:
        serve_args = [*TRAIN, *QUIET, "--trainer.default_root_dir", tmp]
        subprocess.run(
            [sys.executable, "-m", "lit_linreg", "fit", *serve_args], cwd=ROOT, check=True, capture_output=True
        )
        serve_args += ["--ckpt_path", "last"]
        bare_args = ["--coefficients", json.dumps(coefficients(serve_args)), "--workers", str(args.workers)]
        runs = []
        variants = ["ours", "bare", "two steps"] if args.two_steps else ["ours", "bare"]
        two_steps = [sys.executable, "-c", "import sys; from lit_linreg.cli.main import main; sys.exit(main())"]
        for i in range(args.repeats):
            order = variants if i % 2 == 0 else variants[::-1]
            run = {}
            for variant in order:
                port = _free_port()
                if variant == "bare":
                    cmd = [sys.executable, str(ROOT / "benchmarks" / "bare_litserve.py"), *bare_args]
                else:
                    launcher = two_steps if variant == "two steps" else [sys.executable, "-m", "lit_linreg"]
                    cmd = [*launcher, "serve", *serve_args, "--workers", str(args.workers)]
                run[variant] = measure([*cmd, "--port", str(port)], port, args.requests)
            runs.append(run)
            print(f"repeat {i + 1}/{args.repeats}: {run}", file=sys.stderr, flush=True)
    print(f"\nMachine: {platform.platform()}, {os.cpu_count()} CPUs, Python {platform.python_version()},", end=" ")
    print(f"torch {version('torch')}, litserve {version('litserve')}. configs/table.yaml's model; {args.requests}")
    print(f"requests a round; figures: medians of {args.repeats} interleaved rounds, each on a fresh server.\n")
    print(table(runs, args.workers))


if __name__ == "__main__":
    main()
