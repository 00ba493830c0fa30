"""The linear layer on the standardized design of a large batch, row block by row block: no (N, d) copy of the rows.

A full batch of a table in memory is all its training rows, and `nn.Linear(standardize(x) @ M)` holds two
copies of them while it steps, the standardized rows and their whitened product (autograd saves the latter for
the weights' gradient): the step would triple the rows' memory. `standardized_linear` computes the same
y = ((x - m) / s) M V' + b one block of rows at a time, saves only x itself (no copy), and in the backward
pass standardizes (and whitens) each block again: V's gradient is g' (z M), summed over the blocks, and b's is g
summed. The forward pass whitens the weights instead of the rows, z (M V'), as precise there and d / k times
less work; the backward pass recomputes the blocks' z M, one elementwise pass and one matmul more than before.
"""

from __future__ import annotations

import torch

BLOCK_VALUES = 1 << 19
"""Values of x a block of rows holds: 2 MiB in float32, the most the step holds on top of the rows."""


def block_rows(width: int) -> int:
    """Rows of a block, for a design `width` columns wide."""
    return max(1, BLOCK_VALUES // max(1, width))


def applies(x: torch.Tensor) -> bool:
    """Whether `x` (N, d) is a batch worth taking by blocks: more than one block of rows, and no gradient of its own."""
    return x.dim() == 2 and len(x) > block_rows(x.shape[1]) and not x.requires_grad


class _StandardizedLinear(torch.autograd.Function):
    """y = ((x - mean) / std) @ whiten @ weight' + bias, by row blocks; gradients for weight and bias only."""

    @staticmethod
    def forward(ctx, x, mean, std, whiten, weight, bias):  # noqa: D102 (the class says it)
        on_design = weight.T if whiten is None else whiten @ weight.T  # (d, k): M V'
        out = x.new_empty(len(x), len(weight))
        rows = block_rows(x.shape[1])
        for start in range(0, len(x), rows):
            z = (x[start : start + rows] - mean).div_(std)
            if bias is None:
                torch.mm(z, on_design, out=out[start : start + rows])
            else:
                torch.addmm(bias, z, on_design, out=out[start : start + rows])
        ctx.save_for_backward(x, mean, std, whiten)
        ctx.has_bias = bias is not None
        return out

    @staticmethod
    def backward(ctx, grad):  # noqa: D102
        x, mean, std, whiten = ctx.saved_tensors
        grad_weight = grad_bias = None
        if ctx.needs_input_grad[4]:
            # (k, d): g' (z M), summed block by block. Whitened before the sum, not after as (g' z) M: M's large
            # entries would magnify the sum's rounding in the weak directions (measured 6x the error).
            grad_weight = grad.new_zeros(grad.shape[1], x.shape[1])
            rows = block_rows(x.shape[1])
            for start in range(0, len(x), rows):
                z = (x[start : start + rows] - mean).div_(std)
                grad_weight.addmm_(grad[start : start + rows].T, z if whiten is None else z @ whiten)
        if ctx.has_bias and ctx.needs_input_grad[5]:
            grad_bias = grad.sum(dim=0)
        return None, None, None, None, grad_weight, grad_bias


def standardized_linear(
    x: torch.Tensor,
    mean: torch.Tensor,
    std: torch.Tensor,
    whiten: torch.Tensor | None,
    layer: torch.nn.Linear,
) -> torch.Tensor:
    """`layer` on the standardized (and, given `whiten` M, whitened) rows of x (N, d), block by block: (N, k).

    The same numbers as `layer(standardize.forward(x, mean, std) @ M)` up to the order of float sums.
    """
    return _StandardizedLinear.apply(x, mean, std, whiten, layer.weight, layer.bias)
