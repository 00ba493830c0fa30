"""A large batch through the linear layer by row blocks: the plain layer's numbers, and no copy of its rows."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from lit_linreg import LinearRegression
from lit_linreg.model import blocked_linear


@pytest.fixture
def small_blocks(monkeypatch):
    monkeypatch.setattr(blocked_linear, "BLOCK_VALUES", 64)  # 16 rows a block at 4 columns: 63 blocks below


@pytest.mark.parametrize("whitened", [True, False])
@pytest.mark.parametrize("bias", [True, False])
def test_blocks_give_the_plain_layers_output_and_gradients(small_blocks, whitened, bias):
    generator = torch.Generator().manual_seed(0)
    n, d, k = 1001, 4, 2  # the last block is short
    x = torch.randn(n, d, generator=generator, dtype=torch.float64) * 3 + 100
    mean, std = x.mean(0), x.std(0)
    m = torch.randn(d, d, generator=generator, dtype=torch.float64)
    whiten = m @ m.T if whitened else None
    layer = nn.Linear(d, k, bias=bias, dtype=torch.float64)
    upstream = torch.randn(n, k, generator=generator, dtype=torch.float64)
    assert blocked_linear.applies(x)

    (blocked_linear.standardized_linear(x, mean, std, whiten, layer) * upstream).sum().backward()
    blocked = [p.grad.clone() for p in layer.parameters()]
    layer.zero_grad()
    z = (x - mean) / std
    plain = layer(z @ whiten if whitened else z)
    (plain * upstream).sum().backward()

    out = blocked_linear.standardized_linear(x, mean, std, whiten, layer)
    torch.testing.assert_close(out, plain, rtol=1e-12, atol=1e-12)
    for got, want in zip(blocked, (p.grad for p in layer.parameters()), strict=True):
        torch.testing.assert_close(got, want, rtol=1e-11, atol=1e-11)


def test_a_batch_within_one_block_or_needing_its_own_gradient_takes_the_plain_layer(small_blocks):
    assert not blocked_linear.applies(torch.zeros(16, 4))  # one block
    assert blocked_linear.applies(torch.zeros(17, 4))
    assert not blocked_linear.applies(torch.zeros(17, 4, requires_grad=True))


def test_a_full_batch_step_saves_no_copy_of_its_rows_for_the_backward_pass(small_blocks):
    # The step's peak memory (docs/speed-and-memory.md): the plain layer saves its input, the whitened standardized
    # rows, (N, d) beside the rows; by blocks, only the rows themselves are saved.
    n, d = 4096, 4
    generator = torch.Generator().manual_seed(1)
    x, y = torch.randn(n, d, generator=generator) * 5 + 50, torch.randn(n, 1, generator=generator)
    model = LinearRegression(in_features=d, out_features=1, precondition="qr")
    model.design.set_statistics(x.mean(0), x.std(0), y.mean(0), y.std(0))
    model.design.set_whitening(torch.eye(d) + 0.1, rank=d)
    assert model.design.whitens

    saved: list[torch.Tensor] = []

    def keep(t: torch.Tensor) -> torch.Tensor:
        saved.append(t)
        return t

    with torch.autograd.graph.saved_tensors_hooks(keep, lambda t: t):
        loss = nn.functional.mse_loss(model.design.through(model.net, x), model.design.target(y))
    loss.backward()
    large = [t for t in saved if t.numel() >= n * d // 2]
    assert large and all(t.untyped_storage().data_ptr() == x.untyped_storage().data_ptr() for t in large)
    assert model.net.weight.grad is not None and torch.isfinite(model.net.weight.grad).all()

    # ... and the same numbers as the plain layer, in float32.
    blocked_grad = model.net.weight.grad.clone()
    model.net.zero_grad()
    nn.functional.mse_loss(model.net(model.design(x)), model.design.target(y)).backward()
    torch.testing.assert_close(blocked_grad, model.net.weight.grad, rtol=1e-4, atol=1e-6)
