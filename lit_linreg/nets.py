"""Networks the model can carry instead of its default `nn.Linear`: pass one as `--model.net`.

The model hands a network the sizes the data decides, in standardized units: a network that needs them
defines `build(in_features, out_features)`, which the model calls once (`in_features` counts the design's
columns, one-hot columns included). A network that takes no sizes is used as it is.
"""

from __future__ import annotations

from torch import nn

ACTIVATIONS = {"relu": nn.ReLU, "tanh": nn.Tanh, "gelu": nn.GELU, "silu": nn.SiLU}


class MLP(nn.Module):
    """A multilayer perceptron: Linear, activation, ..., Linear.

    Args:
        hidden: Widths of the hidden layers.
        activation: One of relu, tanh, gelu, silu.
    """

    def __init__(self, hidden: list[int] | None = None, activation: str = "relu") -> None:
        super().__init__()
        self.hidden = [64, 64] if hidden is None else list(hidden)
        if any(width < 1 for width in self.hidden):
            raise ValueError(f"model.net.hidden widths must be at least 1, got {self.hidden}")
        if activation not in ACTIVATIONS:
            raise ValueError(f"model.net.activation must be one of {', '.join(ACTIVATIONS)}, got {activation!r}")
        self.activation = activation
        self.layers: nn.Sequential | None = None

    def build(self, in_features: int, out_features: int) -> None:
        widths = [in_features, *self.hidden, out_features]
        layers: list[nn.Module] = []
        for i, (a, b) in enumerate(zip(widths[:-1], widths[1:], strict=True)):
            layers.append(nn.Linear(a, b))
            if i < len(widths) - 2:
                layers.append(ACTIVATIONS[self.activation]())
        self.layers = nn.Sequential(*layers)

    def forward(self, z):
        """(N, in_features) standardized inputs -> (N, out_features) standardized outputs."""
        return self.layers(z)
