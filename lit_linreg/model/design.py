"""The design transform: raw inputs -> the encoded, standardized (and whitened) design the network sees, and back.

`Design` is the part of the model that knows the data's units. It holds the training statistics as buffers
(`x_mean`, `x_std`, `y_mean`, `y_std`, and `whiten`, the matrix M of `precondition: qr`) with the encoder of a
table's categorical and missing cells (see tables/encoding.py), so a checkpoint alone predicts from raw inputs:

    x (N, features) -> encoder -> (x - x_mean) / x_std -> @ whiten -> the design z (N, d) the network sees
    the network's output (N, k), standardized -> * y_std + y_mean -> original units

Until `set_statistics` is called the statistics are the identity, and the arithmetic is skipped. `through(net, x)`
is the network on the design of x; a large batch through one `nn.Linear` goes by row blocks there (see
blocked_linear.py), without an (N, d) copy of its rows. `coefficients` is the one place that maps a linear layer's
weights back to original units (see standardize.py).
"""

from __future__ import annotations

import torch
from torch import nn

from lit_linreg.model import blocked_linear, standardize
from lit_linreg.tables.encoding import TableEncoder, design_names, needs_encoder


class Design(nn.Module):
    """Raw inputs to the network's design, and the network's standardized outputs back to original units.

    Args:
        schema: The data's columns (see tables/encoding.py): the encoder and the design's column names.
        out_features: The targets, k.
        whiten: Whether to hold the whitening matrix M (`precondition: qr`); other models' checkpoints lack it.
    """

    def __init__(self, schema: dict, out_features: int, whiten: bool = False) -> None:
        super().__init__()
        self.encoder = TableEncoder(schema) if needs_encoder(schema) else None
        self.names = design_names(schema)  # the columns the network sees, in order
        standardize.add_buffers(self, len(self.names), out_features, whiten=whiten)  # the identity until set
        self.scales = False  # whether the statistics are other than the identity: else every step skips them
        self.whitens = False  # whether `whiten` is other than the identity
        self.whitened_rank: int | None = None  # the rank of the standardized design, once whitened
        self.condition_before: float | None = None  # the Hessian's condition number that whitening took to 1
        self.register_load_state_dict_post_hook(_note_after_load)

    @property
    def width(self) -> int:
        """The design's columns, d."""
        return len(self.names)

    @torch.no_grad()
    def set_statistics(
        self,
        x_mean: torch.Tensor,
        x_std: torch.Tensor,
        y_mean: torch.Tensor,
        y_std: torch.Tensor,
        fill: torch.Tensor | None = None,
    ) -> None:
        """Store the training statistics (and the missing-value fills of the inputs), in the buffers' dtype."""
        for name, value in zip(standardize.STATISTICS, (x_mean, x_std, y_mean, y_std), strict=True):
            getattr(self, name).copy_(value)
        if fill is not None and self.encoder is not None:
            self.encoder.fill.copy_(fill)
        self._note()

    @torch.no_grad()
    def set_whitening(self, matrix: torch.Tensor, rank: int, condition_before: float | None = None) -> None:
        """Whiten the standardized design by M (d, d), which keeps `rank` directions and takes the loss's Hessian from
        `condition_before` to condition number 1 (see precondition.py)."""
        self.whiten.copy_(matrix)
        self.whitened_rank, self.condition_before = rank, condition_before
        self._note()

    def _note(self) -> None:
        """Decide once, when the statistics change or load, whether the per-step arithmetic is needed at all."""
        self.scales = standardize.scales(self.x_mean, self.x_std, self.y_mean, self.y_std)
        self.whitens = standardize.whitens(getattr(self, "whiten", None))
        if self.whitens and self.whitened_rank is None:  # loaded from a checkpoint
            self.whitened_rank = int(torch.linalg.matrix_rank(self.whiten.double()))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Raw inputs (N, features) -> the design (N, d): encoded, standardized, whitened where set."""
        x = self._as_own(x)
        if self.encoder is not None:
            x = self.encoder(x)
        z = standardize.forward(x, self.x_mean, self.x_std) if self.scales else x
        return z @ self.whiten if self.whitens else z

    def through(self, net: nn.Module, x: torch.Tensor) -> torch.Tensor:
        """`net` on the design of raw inputs x (N, features): its output (N, k), in standardized units.

        A large batch through one `nn.Linear` (not a subclass, whose forward may differ) goes by row blocks.
        """
        x = self._as_own(x)
        if self.scales and type(net) is nn.Linear and blocked_linear.applies(x):
            design = self.encoder(x) if self.encoder is not None else x
            whiten = self.whiten if self.whitens else None
            return blocked_linear.standardized_linear(design, self.x_mean, self.x_std, whiten, net)
        return net(self(x))

    def target(self, y: torch.Tensor) -> torch.Tensor:
        """Targets (N, k) in original units -> the standardized ones the network learns."""
        y = self._as_own(y)
        return standardize.forward(y, self.y_mean, self.y_std) if self.scales else y

    def inverse(self, output: torch.Tensor) -> torch.Tensor:
        """The network's standardized output (N, k) -> original units."""
        return standardize.inverse(output, self.y_mean, self.y_std) if self.scales else output

    def in_target_units(self, per_output: torch.Tensor) -> torch.Tensor:
        """Mean squared errors of each output (k,) in standardized units -> their mean in the targets' units, float64
        (the square of a y_std near 1e20 overflows float32)."""
        if not self.scales:
            return per_output.mean()
        return (per_output.double() * self.y_std.double().square()).mean()

    @torch.no_grad()
    def coefficients(self, linear: nn.Linear) -> tuple[torch.Tensor, torch.Tensor]:
        """W (k, d) and b (k,) in original units, float64, of `linear` trained on this design."""
        whiten = self.whiten if self.whitens else None
        return standardize.coefficients(
            linear.weight, linear.bias, self.x_mean, self.x_std, self.y_mean, self.y_std, whiten
        )

    def _as_own(self, t: torch.Tensor) -> torch.Tensor:
        """Rows in the statistics' dtype: float32 rows for a design made float64 (see `LinearRegression.setup`)."""
        return t if t.dtype == self.x_mean.dtype else t.to(self.x_mean.dtype)


OLD_KEYS = ("x_mean", "x_std", "y_mean", "y_std", "whiten", "encoder.fill")
"""The state_dict keys of these buffers in checkpoints written before `Design` held them (at the model's top)."""


def upgrade_state_dict(state_dict: dict, prefix: str = "") -> None:
    """Rename, in place, a state_dict's keys of the design's buffers as written before `Design` held them:
    `x_mean` -> `design.x_mean`, ..., `encoder.fill` -> `design.encoder.fill`."""
    for key in OLD_KEYS:
        if prefix + key in state_dict:
            state_dict[f"{prefix}design.{key}"] = state_dict.pop(prefix + key)


def _note_after_load(design: Design, incompatible_keys: object) -> None:
    """After `load_state_dict`: the statistics changed. A function, not a lambda, so the model pickles."""
    design._note()
