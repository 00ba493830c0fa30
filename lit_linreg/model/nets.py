"""The networks the model carries: its default `nn.Linear`, or one passed as `--model.net`.

The model hands a network the sizes the data decides, in standardized units: a network that needs them
defines `build(in_features, out_features)`, which `sized_net` calls once (`in_features` counts the design's
columns, one-hot columns included). A network that takes no sizes is used as it is.
"""

from __future__ import annotations

from torch import nn

ACTIVATIONS = {"relu": nn.ReLU, "tanh": nn.Tanh, "gelu": nn.GELU, "silu": nn.SiLU}


def sized_net(
    net: nn.Module | None, in_features: int, out_features: int, bias: bool = True, init: str = "default"
) -> nn.Module:
    """`net` built for the data's sizes when it defines `build`, or, for None, the default linear layer.

    Args:
        net: The network from standardized inputs to standardized outputs, or None for one `nn.Linear`.
        in_features: The design's columns.
        out_features: The outputs.
        bias: Whether the default layer has an intercept.
        init: "default" is PyTorch's uniform init; "zeros" starts the default layer from W = 0, b = 0.
    """
    if net is None:
        net = nn.Linear(in_features, out_features, bias=bias)
        if init == "zeros":
            nn.init.zeros_(net.weight)
            if bias:
                nn.init.zeros_(net.bias)
    elif callable(getattr(net, "build", None)):
        net.build(in_features, out_features)
    return net


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
