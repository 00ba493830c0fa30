"""The linear layer on the standardized design of a large batch, row block by row block: no (N, d) copy of the rows.

A full batch of a table in memory is all its training rows, and `nn.Linear(standardize(x) @ M)` holds two
copies of them while it steps, the standardized rows and their whitened product (autograd saves the latter for
the weights' gradient): the step would triple the rows' memory. `standardized_linear` computes the same
y = ((x - m) / s) M V' + b one block of rows at a time, saves only x itself (no copy), and in the backward
pass standardizes (and whitens) each block again: V's gradient is g' (z M), summed over the blocks, and b's is g
summed. The forward pass whitens the weights instead of the rows, z (M V'), as precise there and d / k times
less work; the backward pass makes the blocks' z M again. Every block is made in one reused buffer that stays in
cache: the step is as fast as the plain layer on narrow rows and three times faster on large ones
(`benchmarks/full_batch_step.py`). A table with categorical columns or filled-in missing values is encoded first
(encoding.py): that design is the one (N, d) copy the step makes and saves.
"""

from __future__ import annotations

import torch

BLOCK_VALUES = 1 << 19
"""Values of x a block of rows holds: 2 MiB in float32 (4 in float64), the most the step holds beside the rows."""


def block_rows(width: int) -> int:
    """Rows of a block, for a design `width` columns wide."""
    return max(1, BLOCK_VALUES // max(1, width))


def applies(x: torch.Tensor) -> bool:
    """Whether `x` (N, d) is a batch worth taking by blocks: more than one block of rows, and no gradient of its own."""
    return x.dim() == 2 and len(x) > block_rows(x.shape[1]) and not x.requires_grad


def _standardized_blocks(x: torch.Tensor, mean: torch.Tensor, std: torch.Tensor):
    """(first row, (x[block] - mean) / std) for each block of rows, all in one buffer: each is used before the next.

    One buffer, not a fresh block each time: a fresh allocation of megabytes is fresh pages, and faulting them
    in cost more than the arithmetic (measured: the step twice as slow on 262,144 x 32 rows).
    """
    rows = block_rows(x.shape[1])
    buffer = x.new_empty(min(rows, len(x)), x.shape[1])
    for start in range(0, len(x), rows):
        block = x[start : start + rows]
        z = buffer[: len(block)]
        yield start, torch.sub(block, mean, out=z).div_(std)


class _StandardizedLinear(torch.autograd.Function):
    """y = ((x - mean) / std) @ whiten @ weight' + bias, by row blocks; gradients for weight and bias only."""

    @staticmethod
    def forward(ctx, x, mean, std, whiten, weight, bias):  # noqa: D102 (the class says it)
        on_design = weight.T if whiten is None else whiten @ weight.T  # (d, k): M V'
        out = x.new_empty(len(x), len(weight))
        for start, z in _standardized_blocks(x, mean, std):
            rows = len(z)
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
            white = None if whiten is None else x.new_empty(min(block_rows(x.shape[1]), len(x)), x.shape[1])
            for start, z in _standardized_blocks(x, mean, std):
                if white is not None:
                    z = torch.mm(z, whiten, out=white[: len(z)])
                grad_weight.addmm_(grad[start : start + len(z)].T, z)
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
