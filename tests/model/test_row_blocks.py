"""A full batch given block by block (model/row_blocks.py): the whole batch's loss and gradient, one block held."""

import pytest
import torch
from torch import nn

from lit_linreg.model.nets import MLP
from lit_linreg.model.row_blocks import RowBlocks, summed_over_blocks


class Blocks(RowBlocks):
    """(x, y) in blocks of `rows`, sliced as they are asked for."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor, rows: int) -> None:
        self.x, self.y, self.rows, self.n_rows = x, y, rows, len(x)

    def __iter__(self):
        for start in range(0, self.n_rows, self.rows):
            yield self.x[start : start + self.rows], self.y[start : start + self.rows]


@pytest.mark.parametrize("network", ["linear", "mlp"])
def test_the_loss_and_gradient_summed_over_blocks_are_the_whole_batch_s(network):
    generator = torch.Generator().manual_seed(0)
    x, y = torch.randn(1000, 5, generator=generator, dtype=torch.float64), torch.randn(1000, 2, dtype=torch.float64)
    torch.manual_seed(0)
    net = nn.Linear(5, 2) if network == "linear" else MLP([8], "tanh")
    if network == "mlp":
        net.build(5, 2)
    net = net.double()

    def loss_per_output(x, y):
        return (net(x) - y).pow(2).mean(dim=0)

    whole = loss_per_output(x, y)
    expected = torch.autograd.grad(whole.mean(), list(net.parameters()))
    per_output, loss = summed_over_blocks(loss_per_output, Blocks(x, y, rows=128), net.parameters())  # 8 blocks
    (loss * 3).backward()  # the incoming gradient scales it, as a loss scaler's would
    torch.testing.assert_close(per_output, whole.detach(), rtol=1e-12, atol=0)
    assert loss.item() == pytest.approx(whole.mean().item(), rel=1e-12)
    for parameter, grad in zip(net.parameters(), expected, strict=True):
        torch.testing.assert_close(parameter.grad, 3 * grad, rtol=1e-12, atol=1e-15)
