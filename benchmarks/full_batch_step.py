"""Time one full-batch training step of the linear model by row blocks against the plain layer; prints a table.

The step is the forward pass, the MSE and the backward pass, on float32 rows standardized (and, where marked,
whitened) inside the step: `blocked_linear.standardized_linear` against `nn.Linear((x - m) / s @ M)`, which
holds (N, d) copies of the rows. The two alternate, so both meet the same spells of a shared machine; each
figure is the median of `--repeats` steps, and the ratio the median of each pair's ratio.

Usage: `python benchmarks/full_batch_step.py --repeats 9` (about a minute).
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from torch import nn

from lit_linreg.model import blocked_linear

SHAPES = [  # (rows, columns, whitened): the table (its training rows), narrow, mid and wide
    (1_677_938, 32, True),
    (262_144, 32, True),
    (600_000, 8, False),
    (1_000_000, 100, False),
    (16_384, 2_046, False),
]


def steps(n: int, d: int, whitened: bool, repeats: int) -> tuple[float, float, float]:
    """Median seconds of a blocked step and a plain one, and the median of their ratios."""
    generator = torch.Generator().manual_seed(0)
    x, y = torch.randn(n, d, generator=generator) * 3 + 5, torch.randn(n, 1, generator=generator)
    mean, std = x.mean(0), x.std(0)
    whiten = torch.eye(d) + 0.01 if whitened else None
    layer = nn.Linear(d, 1)

    def plain() -> None:
        z = (x - mean).div_(std)
        nn.functional.mse_loss(layer(z @ whiten if whitened else z), y).backward()

    def blocked() -> None:
        nn.functional.mse_loss(blocked_linear.standardized_linear(x, mean, std, whiten, layer), y).backward()

    times: dict[str, list[float]] = {"blocked": [], "plain": []}
    for step in (blocked, plain):  # warm-up
        step()
    for _ in range(repeats):
        for name, step in (("blocked", blocked), ("plain", plain)):
            start = time.perf_counter()
            step()
            times[name].append(time.perf_counter() - start)
    ratios = [b / p for b, p in zip(times["blocked"], times["plain"], strict=True)]
    return statistics.median(times["blocked"]), statistics.median(times["plain"]), statistics.median(ratios)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=9)
    args = parser.parse_args()
    print("| rows x columns | by blocks, ms | plain layer, ms | ratio |")
    print("|---|---|---|---|")
    for n, d, whitened in SHAPES:
        blocked, plain, ratio = steps(n, d, whitened, args.repeats)
        shape = f"{n:,} x {d:,}{', whitened' if whitened else ''}"
        print(f"| {shape} | {blocked * 1e3:.1f} | {plain * 1e3:.1f} | {ratio:.2f}x |")


if __name__ == "__main__":
    main()
