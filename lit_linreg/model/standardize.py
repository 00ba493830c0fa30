"""Standardization: the training statistics the model learns inside of, and the maps between their units and the data's.

The model's `Design` (design.py) keeps the statistics as buffers, `x_mean`, `x_std`, `y_mean`, `y_std` (and
`whiten`, the matrix M of `precondition: qr`); these functions are what it does with them. The network sees the
standardized design z = (x - x_mean) / x_std, times M when whitened, and predicts standardized outputs, which
`inverse` takes back to original units; so predictions, metrics and checkpoints are in original units whatever the
network learns in. `coefficients` is the one place that maps the learned W and b back to them.
"""

from __future__ import annotations

import torch
from torch import nn

STATISTICS = ("x_mean", "x_std", "y_mean", "y_std")
"""The statistics' buffer names, in the order `Design.set_statistics` takes them."""


def add_buffers(module: nn.Module, width: int, out_features: int, whiten: bool = False) -> None:
    """Give `module` the statistics as buffers, the identity until set: `STATISTICS`, and `whiten` when asked.

    `whiten` only for `precondition: qr`, so that the checkpoints of other models keep the state_dict they always had.

    Args:
        module: The model.
        width: The design's columns, d.
        out_features: The outputs, k.
        whiten: Whether to add M (d, d) too.
    """
    module.register_buffer("x_mean", torch.zeros(width))
    module.register_buffer("x_std", torch.ones(width))
    module.register_buffer("y_mean", torch.zeros(out_features))
    module.register_buffer("y_std", torch.ones(out_features))
    if whiten:
        module.register_buffer("whiten", torch.eye(width))  # (d, d) M: the net sees z @ M


def from_moments(moments) -> dict[str, torch.Tensor]:
    """The four statistics of a statistics pass (`statistics.SufficientStatistics`), as float64 tensors."""
    return {name: torch.from_numpy(getattr(moments, name)) for name in STATISTICS}


def scales(x_mean: torch.Tensor, x_std: torch.Tensor, y_mean: torch.Tensor, y_std: torch.Tensor) -> bool:
    """Whether the statistics are other than the identity (means 0, stds 1): else the model skips the arithmetic."""
    means, stds = torch.cat([x_mean, y_mean]), torch.cat([x_std, y_std])
    return bool(means.any() or (stds != 1).any())


def whitens(whiten: torch.Tensor | None) -> bool:
    """Whether a whitening matrix (d, d) is there and other than the identity."""
    return whiten is not None and not torch.equal(whiten, torch.eye(len(whiten), device=whiten.device))


def forward(x: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """Original units (N, d) -> standardized ones, (x - mean) / std; the model whitens after, z @ whiten.

    Divided in place: a full batch holds one standardized copy of its rows, not two.
    """
    return (x - mean).div_(std)


def inverse(z: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """Standardized outputs (N, k) -> original units, z * std + mean."""
    return z * std + mean


@torch.no_grad()
def coefficients(
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    x_mean: torch.Tensor,
    x_std: torch.Tensor,
    y_mean: torch.Tensor,
    y_std: torch.Tensor,
    whiten: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """W (k, d) and b (k,) in original units, as float64, of a linear layer trained in standardized units.

    Undoes the standardization: y = t * (W_s (x - m) / s + b_s) + u, with W_s = V M' for the whitened layer's
    weights V when `whiten` M is given (the layer sees z M). A layer without bias has b_s = 0.

    Args:
        weight: The layer's weights (k, d), on the whitened design when `whiten` is given.
        bias: The layer's bias (k,), or None.
        x_mean: m (d,), the inputs' means.
        x_std: s (d,), the inputs' standard deviations.
        y_mean: u (k,), the outputs' means.
        y_std: t (k,), the outputs' standard deviations.
        whiten: M (d, d), or None when the layer sees z itself.
    """
    w_s = weight.double()
    if whiten is not None:
        w_s = w_s @ whiten.double().T
    b_s = bias.double() if bias is not None else torch.zeros(len(w_s), dtype=w_s.dtype)
    s, m, t, u = (v.double() for v in (x_std, x_mean, y_std, y_mean))
    b_s = b_s.to(w_s.device)
    return t[:, None] * w_s / s[None, :], t * (b_s - w_s @ (m / s)) + u
