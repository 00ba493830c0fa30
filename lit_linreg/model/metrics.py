"""R², exact at any scale of the targets, and the one line a run says when a metric is beyond what a logger stores.

torchmetrics' R2Score calls a target constant when its total sum of squares is within 1e-4 of 0, absolute: targets
in units of 1e-20 (a column in another unit) scored R² = 1 whatever the fit, and its one-pass
`sum(y**2) - sum(y) * mean(y)` loses every digit to cancellation when the targets sit far from 0. `R2` keeps each
output's mean and sum of squared deviations by Chan's parallel update, in float64, and calls a target constant
only relative to its own size.
"""

from __future__ import annotations

import functools

import torch
from lightning.pytorch.utilities import rank_zero_info
from torchmetrics import Metric

FLOAT32 = torch.finfo(torch.float32)  # TensorBoard stores scalars as float32; the model predicts in it


class R2(Metric):
    """The coefficient of determination, averaged over the outputs, accumulated in float64.

    1 - RSS / TSS per output; for a constant target (its deviations from its mean all rounding), 1 if the fit is
    exact and 0 otherwise, as torchmetrics and scikit-learn do.
    """

    full_state_update = False

    def __init__(self) -> None:
        super().__init__()
        for name in ("count", "mean", "m2", "rss"):
            self.add_state(name, default=torch.zeros(0, dtype=torch.float64), dist_reduce_fx="cat")

    def update(self, preds: torch.Tensor, target: torch.Tensor) -> None:
        """Add a batch: `preds` and `target` (B, outputs)."""
        preds, target = preds.double(), target.double()
        mean = target.mean(dim=0)
        batch = (torch.full_like(mean, len(target)), mean, (target - mean).square().sum(dim=0))
        rss = (target - preds).square().sum(dim=0)
        if self.count.numel():  # one row (of each output) per rank: the ranks' rows are merged in `compute`
            batch, rss = _merge((self.count[0], self.mean[0], self.m2[0]), batch), self.rss[0] + rss
        (self.count, self.mean, self.m2), self.rss = (state[None] for state in batch), rss[None]

    def compute(self) -> torch.Tensor:
        rows = zip(self.count, self.mean, self.m2, strict=True)
        n, centre, tss = functools.reduce(_merge, rows)
        rss = self.rss.sum(dim=0)
        # Constant: the deviations from the mean are rounding (a few float64 ulps of it); predicted exactly: the
        # errors are float32 rounding, the predictions' type.
        constant = tss <= n * (64 * torch.finfo(torch.float64).eps * centre).square()
        exact = rss <= n * (64 * FLOAT32.eps * centre).square()
        scores = torch.where(constant, exact.double(), 1 - rss / torch.where(constant, 1.0, tss))
        return scores.mean()


Moments = tuple[torch.Tensor, torch.Tensor, torch.Tensor]  # count, mean, sum of squared deviations, (outputs,) each


def _merge(a: Moments, b: Moments) -> Moments:
    """The moments of two sets of rows together (Chan et al.): no sum of squares of the raw values, no cancellation."""
    (n_a, mean_a, m2_a), (n_b, mean_b, m2_b) = a, b
    n = n_a + n_b
    delta = mean_b - mean_a
    return n, mean_a + delta * n_b / n, m2_a + m2_b + delta.square() * n_a * n_b / n


def say_if_beyond_float32(name: str, value: float, said: set[str]) -> None:
    """One line, once per metric, when `value` is beyond float32, the type TensorBoard stores scalars in.

    The metric itself is float64 and exact (the end-of-fit table, checkpoints and the CSV logger keep it); only
    TensorBoard's chart of it shows inf, or a number rounded to a few digits near 0.
    """
    magnitude = abs(value)
    if name in said or not (magnitude > FLOAT32.max or 0 < magnitude < FLOAT32.tiny):
        return
    said.add(name)
    rank_zero_info(
        f"{name} is {value:.6g}, beyond float32 (TensorBoard's scalar type): its TensorBoard chart shows"
        f" {'inf' if magnitude > FLOAT32.max else 'it rounded'}; the end-of-fit table, the checkpoints and"
        " --trainer.logger CSVLogger keep it exactly"
    )
