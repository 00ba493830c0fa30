"""Benchmark `serve` against a bare LitServe API serving the same linear layer: memory, start-up, throughput, latency.

configs/table.yaml (houses.csv, its four numeric features) is trained briefly into a temporary directory. Each
repeat starts, one after the other (the order alternating between repeats), `python -m lit_linreg serve` of that
checkpoint and benchmarks/bare_litserve.py, an `nn.Linear` holding the same coefficients, each on a free loopback
port with the same `--workers`, `max_batch_size` 64 and `batch_timeout` 0: for each, the seconds from its start to
the first `GET /health` answering 200. Then the load, in `--bursts` turns: in each, one server at a time takes
`--requests` / `--bursts` POST /predict requests of one row each, the same JSON body, from 8 client threads, each on
a keep-alive connection of its own, while the other is paused (SIGSTOP to its whole process group, so it takes no
CPU; SIGCONT before its own turn). Turns this short, side by side, see the same spell of a shared machine, where one
server's round after the other's did not. Over its turns, each server's requests per second and the p99 of its
latencies. Then, for each server alone: its CPU while idle (the whole group's CPU seconds over 2 s without a
request, in % of one core), and the resident memory (RSS) summed over its process group (Linux's /proc). Each
figure is the median over the repeats; each ratio the median over the repeats of ours / bare (ready time: ours -
bare). Requests go to 127.0.0.1 only. With `--two-steps`, each repeat also starts the same model through `serve`'s
two steps in turn (the CLI's `main`, as a program that imports it runs it: the model resolved, then the server
started), for its ready time.

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
IDLE_S = 2.0  # seconds an idle server's CPU is measured over
GOALS = {  # measure: (how the ratio is written, goal, whether it is met)
    "rss": ("{:.2f}x", "<= 1.2x", lambda v: v <= 1.2),
    "idle": ("{:+.0f} %", "<= +5 %", lambda v: v <= 5),
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


def _group(pgid: int) -> list[tuple[list[str], str]]:
    """Each process of group `pgid`: its /proc stat fields after the command name, and its /proc status text."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            if int(fields[2]) == pgid:
                found.append((fields, (entry / "status").read_text()))
        except (OSError, IndexError):
            continue  # ended meanwhile
    return found


def group_rss_mb(pgid: int) -> tuple[float, int]:
    """The resident memory of every process in group `pgid`, summed, in MB; and how many processes."""
    processes = _group(pgid)
    total = sum(
        next((int(line.split()[1]) for line in status.splitlines() if line.startswith("VmRSS:")), 0)
        for _, status in processes
    )
    return total / 1024, len(processes)


def group_cpu_s(pgid: int) -> float:
    """The CPU seconds (user and system) every process in group `pgid` has used so far, summed."""
    ticks = sum(int(fields[11]) + int(fields[12]) for fields, _ in _group(pgid))
    return ticks / os.sysconf("SC_CLK_TCK")


def idle_cpu_percent(pgid: int) -> float:
    """The CPU group `pgid` uses while no request arrives, in % of one core, over IDLE_S seconds."""
    time.sleep(0.5)  # the last request's work done
    began = group_cpu_s(pgid)
    time.sleep(IDLE_S)
    return 100 * (group_cpu_s(pgid) - began) / IDLE_S


def load(port: int, requests: int) -> tuple[float, list[float]]:
    """`requests` single-row POSTs from CLIENTS threads: the seconds they took, and every request's latency."""
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
    return elapsed, [t for client in latencies for t in client]


def measure(servers: dict[str, tuple[subprocess.Popen, int]], requests: int, bursts: int) -> dict[str, dict]:
    """The load in `bursts` turns, one server at a time while the others are paused; then each server's idle CPU
    and memory. Returns, per server, requests/s and p99 latency (ms) over its turns, idle CPU (%) and RSS (MB)."""
    seconds, latencies = {name: 0.0 for name in servers}, {name: [] for name in servers}
    for process, port in servers.values():
        load(port, 200)  # warm-up: connections, first-call paths
        os.killpg(process.pid, signal.SIGSTOP)
    names = list(servers)
    for turn in range(bursts):
        for name in names if turn % 2 == 0 else names[::-1]:
            process, port = servers[name]
            os.killpg(process.pid, signal.SIGCONT)
            time.sleep(0.2)
            elapsed, taken = load(port, requests // bursts)
            os.killpg(process.pid, signal.SIGSTOP)
            seconds[name] += elapsed
            latencies[name] += taken
    figures = {}
    for name, (process, _) in servers.items():
        os.killpg(process.pid, signal.SIGCONT)
        every = sorted(latencies[name])
        figures[name] = {
            "rps": len(every) / seconds[name],
            "p99": 1000 * every[min(len(every) - 1, int(len(every) * 0.99))],
            "idle": idle_cpu_percent(process.pid),
        }
        figures[name]["rss"], figures[name]["processes"] = group_rss_mb(process.pid)
        os.killpg(process.pid, signal.SIGSTOP)
    for process, _ in servers.values():
        os.killpg(process.pid, signal.SIGCONT)
    return figures


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
        if key in ("ready", "idle"):
            return statistics.median(r["ours"][key] - r["bare"][key] for r in runs)
        return statistics.median(r["ours"][key] / r["bare"][key] for r in runs)

    processes = int(median("ours", "processes")), int(median("bare", "processes"))
    measures = {
        "rss": f"RSS of the process group after the load, MB ({processes[0]} and {processes[1]} processes)",
        "idle": f"CPU while idle, % of one core, over {IDLE_S:.0f} s",
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
    parser.add_argument("--requests", type=int, default=4000, help="requests to each server a round, over 8 clients")
    parser.add_argument("--bursts", type=int, default=8, help="turns a round's requests are taken in")
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
            servers, ready = {}, {}
            try:
                for variant in variants if i % 2 == 0 else variants[::-1]:
                    port = _free_port()
                    if variant == "bare":
                        cmd = [sys.executable, str(ROOT / "benchmarks" / "bare_litserve.py"), *bare_args]
                    else:
                        launcher = two_steps if variant == "two steps" else [sys.executable, "-m", "lit_linreg"]
                        cmd = [*launcher, "serve", *serve_args, "--workers", str(args.workers)]
                    process, ready[variant] = start([*cmd, "--port", str(port)], port)
                    if variant == "two steps":
                        stop(process)  # its ready time only: it serves as `ours` does
                    else:
                        os.killpg(process.pid, signal.SIGSTOP)  # paused while the next one starts
                        servers[variant] = (process, port)
                for process, _ in servers.values():
                    os.killpg(process.pid, signal.SIGCONT)
                figures = measure(servers, args.requests, args.bursts)
            finally:
                for process, _ in servers.values():
                    os.killpg(process.pid, signal.SIGCONT)
                    stop(process)
            run = {variant: {**figures.get(variant, {}), "ready": ready[variant]} for variant in variants}
            runs.append(run)
            print(f"repeat {i + 1}/{args.repeats}: {run}", file=sys.stderr, flush=True)
    print(f"\nMachine: {platform.platform()}, {os.cpu_count()} CPUs, Python {platform.python_version()},", end=" ")
    print(f"torch {version('torch')}, litserve {version('litserve')}. configs/table.yaml's model; {args.requests}")
    print(f"requests to each a round, in {args.bursts} turns; figures: medians of {args.repeats} rounds, each on fresh")
    print("servers.\n")
    print(table(runs, args.workers))


if __name__ == "__main__":
    main()
