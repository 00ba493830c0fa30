"""A full batch given as blocks of rows: its loss, with the gradient summed block by block.

A table too large for memory (`--data.in_memory false`) is streamed from disk, and its full batch reaches
`training_step` as one `RowBlocks` an epoch: an iterable that reads the batch's (x, y) blocks one after another,
never holding two. `summed_over_blocks` runs each block's forward and backward before the next block is read,
and frees them, adding up the gradients of the parameters; it returns the batch's mean loss as a tensor whose
backward hands each parameter that sum. So Lightning's one backward and one optimizer step (and under DDP one
all-reduce) take the same step as on the batch in memory, up to the order of float sums, and the memory a step
needs does not grow with the table's rows.

A loss that is a mean over rows, as `loss_per_output` is, is the same taken by blocks: block b of n_b rows
weighs n_b / N in the batch's mean.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator

import torch


class RowBlocks:
    """One batch of `n_rows` rows, given block by block: each iteration reads its (x, y) blocks in turn.

    A subclass implements `__iter__`. An iterator over it must let go of a block once the next one is asked for.
    """

    n_rows: int

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        raise NotImplementedError

    def __len__(self) -> int:
        return self.n_rows


def summed_over_blocks(
    loss_per_output: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    blocks: RowBlocks,
    parameters: Iterable[torch.nn.Parameter],
) -> tuple[torch.Tensor, torch.Tensor]:
    """The mean loss of each output (k,) over every row of `blocks` (detached), and their mean, whose backward gives
    each parameter the gradient of the whole batch's loss.

    Args:
        loss_per_output: (x, y) -> the mean loss of each output over those rows, (k,).
        blocks: The batch.
        parameters: The parameters the gradient is for.
    """
    parameters = [p for p in parameters if p.requires_grad]
    gradients = [torch.zeros_like(p) for p in parameters]
    per_output = None
    rows = iter(blocks)
    while (block := next(rows, None)) is not None:
        x, y = block
        block_loss = loss_per_output(x, y) * (len(x) / blocks.n_rows)  # (k,): its share of the batch's means
        for total, grad in zip(gradients, _gradients(block_loss.mean(), parameters), strict=True):
            if grad is not None:
                total += grad
        per_output = block_loss.detach() if per_output is None else per_output + block_loss.detach()
        del x, y, block, block_loss  # before the next block is read: one block of rows at a time
    if per_output is None:
        raise ValueError("a batch of row blocks held no rows")
    return per_output, _WithGradients.apply(per_output.mean(), gradients, *parameters)


def _gradients(loss: torch.Tensor, parameters: list[torch.nn.Parameter]) -> tuple[torch.Tensor | None, ...]:
    """d loss / d parameter, for each; the block's graph is freed after (None: a parameter the loss does not use)."""
    return torch.autograd.grad(loss, parameters, allow_unused=True)


class _WithGradients(torch.autograd.Function):
    """`value`, whose backward hands each parameter its given gradient (times the incoming one)."""

    @staticmethod
    def forward(ctx, value, gradients, *parameters):  # noqa: D102 (the class says it)
        ctx.gradients = gradients
        return value.clone()

    @staticmethod
    def backward(ctx, grad):  # noqa: D102
        return None, None, *(grad * g for g in ctx.gradients)
