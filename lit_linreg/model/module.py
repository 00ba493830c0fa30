"""The LightningModule: one `nn.Linear` trained with MSE and SGD.

The notebooks' loop, step by step, and where each step lives now:
    forward      y_pred = w * x          -> `forward`: `Design` (design.py), then the network (nn.Linear)
    loss         ((y_pred - y)**2).mean() -> `training_step`, by `loss_per_output`
    gradient     l.backward()             -> Lightning, on the loss `training_step` returns
    update       w -= lr * w.grad         -> `configure_optimizers` (SGD: optim.py), stepped by Lightning
    zero-grad    w.grad.zero_()           -> Lightning, before each step
"""

from __future__ import annotations

from typing import Literal

import lightning as L
import torch
from lightning.pytorch.utilities import rank_zero_info
from torch import nn
from torchmetrics import MeanAbsoluteError, MeanSquaredError, MetricCollection

from lit_linreg.errors import ConfigError, DivergenceError
from lit_linreg.model import optim, standardize
from lit_linreg.model.design import Design, upgrade_state_dict
from lit_linreg.model.metrics import R2, say_if_beyond_float32
from lit_linreg.model.nets import sized_net
from lit_linreg.model.precondition import whitening_for, why_not_qr
from lit_linreg.model.row_blocks import RowBlocks, summed_over_blocks
from lit_linreg.tables.encoding import default_schema

# What each argument allows, checked in this order; a value outside says "model.<name> must be <rule>, got <value>".
RANGES = {
    "in_features": (lambda v: v >= 1, "at least 1"),
    "out_features": (lambda v: v >= 1, "at least 1"),
    "lr": (lambda v: v == "auto" or v > 0, "> 0 or auto"),
    "momentum": (lambda v: v == "auto" or 0 <= v < 1, "in [0, 1) or auto"),
    "weight_decay": (lambda v: v >= 0, ">= 0"),
    "l1_strength": (lambda v: v >= 0, ">= 0"),
    "l2_strength": (lambda v: v >= 0, ">= 0"),
}
CHOICES = {"init": ("default", "zeros"), "precondition": ("none", "qr")}


class _HookNamesSetCheaply(L.LightningModule):
    """A LightningModule on which Lightning's bookkeeping of the hook it calls costs a tenth of what it did.

    Lightning sets `_current_fx_name` twice for every hook it calls, about fifty times a training step, and
    nn.Module.__setattr__ checks each value against parameters, buffers and submodules: for a string name, which
    is none of those, a plain attribute is the same thing (measured: a mini-batch step 3 to 5 % faster).
    """

    def __setattr__(self, name: str, value: object) -> None:
        if name == "_current_fx_name":
            object.__setattr__(self, name, value)
        else:
            super().__setattr__(name, value)


class LinearRegression(_HookNamesSetCheaply):
    """Linear regression y = W x + b, trained by SGD on the mean squared error.

    Inputs and outputs are always in original units. `design` (design.py) takes raw inputs to what the network
    sees: a table's categorical and missing cells encoded, standardized by the training statistics, whitened under
    `precondition: qr`; it keeps those as buffers, so a checkpoint alone predicts from raw inputs. The `schema`
    (the data's columns, see tables/encoding.py) is a hyperparameter, so it travels in every checkpoint.

    Args:
        in_features: Input columns; the CLI links it from the DataModule.
        out_features: Output columns; the CLI links it from the DataModule.
        bias: Learn an intercept b.
        init: "default" is PyTorch's uniform init; "zeros" starts from W = 0, b = 0 as the notebooks do.
        lr: SGD learning rate, > 0; "auto" takes it from the training data's curvature (see optim.py).
        momentum: SGD momentum, in [0, 1); "auto" too (heavy-ball momentum for full-batch training).
        weight_decay: SGD weight decay (applies to W and b), >= 0.
        l1_strength: L1 penalty l1 * sum|W| added to the loss (W only, not b), >= 0.
        l2_strength: L2 penalty l2 * sum(W**2) added to the loss (W only, not b), >= 0.
        schema: The data's columns (see tables/encoding.py); the CLI links it from the DataModule.
        net: The network from the design to standardized outputs; `nn.Linear` if None. One that defines
            `build(in_features, out_features)` gets the data's sizes from the model (see nets.py). `bias` and
            `init` apply to the default linear layer only; l1/l2 penalize every `weight`.
        precondition: "qr" trains the linear layer on the design whitened by the statistics' R factor: a few
            epochs whatever the condition number (see precondition.py); "none" in standardized units, the notebooks'
            way. "qr" falls back to "none", saying why, where it does not apply (see `precondition.why_not_qr`).
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        bias: bool = True,
        init: Literal["default", "zeros"] = "default",
        lr: float | Literal["auto"] = 0.01,
        momentum: float | Literal["auto"] = 0.0,
        weight_decay: float = 0.0,
        l1_strength: float = 0.0,
        l2_strength: float = 0.0,
        schema: dict | None = None,
        net: nn.Module | None = None,
        precondition: Literal["none", "qr"] = "none",
    ) -> None:
        super().__init__()
        _check_arguments(locals())  # here, the arguments as given and nothing else
        self.lr, self.momentum = lr, momentum  # numbers once `tune_sgd` has resolved "auto"
        self.max_stable_lr: float | None = None  # full-batch gradient descent diverges at or above it
        self.lr_was_auto = lr == "auto"  # whether `lr auto` chooses the learning rate (see `optim.lr_advice`)
        # Primitives only, so checkpoints load with weights_only=True: a custom net is rebuilt from the config.
        self.save_hyperparameters(ignore=["net"])
        self.schema = _checked_schema(schema, in_features, out_features)
        self.design = Design(self.schema, out_features, whiten=precondition == "qr")
        self.design_names = self.design.names  # the columns the network sees, in order
        self.net = sized_net(net, self.design.width, out_features, bias, init)
        self.register_load_state_dict_pre_hook(_upgrade_and_follow_dtype)
        # float64 states: squared errors of targets near 1e20 (or 1e-20) overflow (or vanish) in float32.
        metrics = MetricCollection({"loss": MeanSquaredError(), "mae": MeanAbsoluteError(), "r2": R2()})
        self.val_metrics = metrics.clone(prefix="val/").set_dtype(torch.float64)
        self.test_metrics = metrics.clone(prefix="test/").set_dtype(torch.float64)
        self._said_beyond_float32: set[str] = set()  # metrics TensorBoard cannot hold, said once each

    def setup(self, stage: str) -> None:
        # The one place the model reads from the DataModule, whose `setup` Lightning runs just before this hook.
        if stage != "fit":  # the checkpoint holds them
            return
        datamodule = getattr(self.trainer, "datamodule", None)
        stats, moments = getattr(datamodule, "statistics", None), getattr(datamodule, "train_statistics", None)
        if stats is not None:
            self.design.set_statistics(**stats)
        if self.hparams.precondition == "qr":
            stats = self._precondition(moments, stats, datamodule)
        if "auto" in (self.lr, self.momentum) and not self.is_linear:
            raise ConfigError("model.lr and model.momentum 'auto' apply to a linear model only: give numbers")
        if moments is not None and self.is_linear:
            full_batch = getattr(datamodule, "batch_size", 0) is None
            self.tune_sgd(moments, standardized=stats is not None, full_batch=full_batch)
        elif "auto" in (self.lr, self.momentum):
            raise ConfigError("model.lr and model.momentum 'auto' need a DataModule with train_statistics")

    def _precondition(self, moments, stats: dict | None, datamodule) -> dict | None:
        """`precondition: qr` where it applies, saying in one line where it does not; returns the statistics used.

        Where float32 rows cannot resolve the table and float64 rows can, the DataModule is asked to hold its rows in
        float64 (`precondition.whitening_for`), and the model trains in float64 too."""
        penalized = bool(self.hparams.l1_strength or self.hparams.l2_strength or self.hparams.weight_decay)
        line = why_not_qr(moments, self.is_linear, getattr(self.net, "bias", None) is not None, penalized)
        if line is not None:
            rank_zero_info(f"precondition qr does not apply: {line}; training without it")
            return stats
        stats = stats or standardize.from_moments(moments)  # whitening centres, so it standardizes anyway
        found, line = whitening_for(moments, datamodule)
        if found.precision == "float64":
            self.double()  # the rows' precision all the way: a float32 layer would round what they resolve
        self.design.set_statistics(**stats)  # again if made float64 just now: without float32's rounding
        self.design.set_whitening(found.matrix, found.rank, found.condition_before)
        if line:
            rank_zero_info(line)
        return stats

    def tune_sgd(self, moments, standardized: bool, full_batch: bool) -> None:
        """Resolve `lr: auto` and `momentum: auto` from the loss's Hessian (see optim.py); note the lr it allows."""
        auto = "auto" in (self.lr, self.momentum)
        if moments.method == "moments" and not auto:
            return  # the passes would only serve the divergence advice
        whitened = (self.design.whitened_rank, self.design.condition_before) if self.design.whitens else None
        eigenvalues, how = optim.hessian_eigenvalues(moments, self.net.bias is not None, standardized, whitened)
        self.max_stable_lr = optim.max_stable_lr(eigenvalues)
        if auto:
            self.lr, self.momentum, line = optim.auto_sgd(self.lr, self.momentum, eigenvalues, full_batch, how)
            rank_zero_info(line)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Predict from raw inputs (N, in_features), a categorical column's cells as codes (positions in
        `schema["categories"][column]`); returns (N, out_features) in original units."""
        return self.design.inverse(self.design.through(self.net, x))

    def loss_per_output(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """The training loss of each output, (out_features,): the mean squared error in standardized units. Override
        it for another mean over rows (docs/model.md): `training_step` averages it and adds the penalty."""
        prediction, target = self.design.through(self.net, x), self.design.target(y)  # (B, out_features)
        if prediction.shape[1] == 1:  # one output: its mean is the batch's, one fused op (a tenth of a step's cost)
            return nn.functional.mse_loss(prediction, target).reshape(1)
        return nn.functional.mse_loss(prediction, target, reduction="none").mean(dim=0)

    def penalty(self) -> torch.Tensor | float:
        """The L1 and L2 penalties on every `weight` (W of the linear model, never b); 0.0 when both are 0."""
        l1, l2 = self.hparams.l1_strength, self.hparams.l2_strength
        if not (l1 or l2):
            return 0.0
        weights = [p for name, p in self.net.named_parameters() if name.endswith("weight")]
        return sum(l1 * w.abs().sum() + l2 * w.pow(2).sum() for w in weights)

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor] | RowBlocks, batch_idx: int) -> torch.Tensor:
        # A full batch streamed from disk comes as blocks of rows, each freed before the next is read (row_blocks.py).
        if isinstance(batch, RowBlocks):
            per_output, loss = summed_over_blocks(self.loss_per_output, batch, self.parameters())
        else:
            per_output = self.loss_per_output(*batch)
            loss = per_output.mean()
        loss = loss + self.penalty()
        if not torch.isfinite(loss):
            raise DivergenceError(
                f"the training loss became {loss.item()} at epoch {self.current_epoch}, step {self.global_step}:"
                f" training stopped; {optim.lr_advice(self.lr, self.max_stable_lr, self.lr_was_auto)}"
            )
        # In target units, before this step's update (as the notebooks print it), on the steps the logger writes.
        every = self.trainer.log_every_n_steps
        if every and (self.global_step + 1) % every == 0:
            self.log("train/loss", self.design.in_target_units(per_output.detach()), prog_bar=True, batch_size=1)
        return loss

    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        self._evaluate(batch, self.val_metrics)

    def test_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        self._evaluate(batch, self.test_metrics)

    def _evaluate(self, batch: tuple[torch.Tensor, torch.Tensor], metrics: MetricCollection) -> None:
        x, y = batch
        y_hat, y = self(x).double(), y.double()  # (B, out_features)
        # MSE and MAE average over every element of every output; R2 averages the per-output scores.
        metrics["loss"].update(y_hat.flatten(), y.flatten())
        metrics["mae"].update(y_hat.flatten(), y.flatten())
        metrics["r2"].update(y_hat, y)
        self.log_dict(metrics, batch_size=len(x))

    def on_validation_epoch_end(self) -> None:
        # TensorBoard's HPARAMS tab shows `hp_metric`: make it the latest val/loss rather than Lightning's -1.
        val_loss = self.val_metrics["loss"].compute()  # cached: logging val/loss later does not compute it again
        self.log("hp_metric", val_loss, sync_dist=True)  # synced over DDP ranks already: sync_dist only says so
        say_if_beyond_float32("val/loss", float(val_loss), self._said_beyond_float32)

    def predict_step(self, batch: tuple[torch.Tensor], batch_idx: int) -> torch.Tensor:
        return self(batch[0])

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return optim.sgd(self.parameters(), self.lr, self.momentum, self.hparams.weight_decay)

    @torch.no_grad()
    def coefficients(self) -> tuple[torch.Tensor, torch.Tensor] | None:
        """W (out_features, design columns) and b (out_features,) in original units, float64; None unless linear
        (callbacks that need coefficients call this and stand aside on None)."""
        return self.design.coefficients(self.net) if self.is_linear else None

    @property
    def is_linear(self) -> bool:
        """Whether the network is one linear layer: then coefficients, inference and the loss gap mean something."""
        return isinstance(self.net, nn.Linear)

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        # Never let a diverged state reach disk: the last finite checkpoint stays the newest one. Every tensor counts.
        state = checkpoint["state_dict"]
        bad = [name for name, t in state.items() if t.is_floating_point() and not torch.isfinite(t).all()]
        if bad:
            raise DivergenceError(
                f"{', '.join(bad)} became non-finite by the end of epoch {self.current_epoch}: nothing was saved;"
                " lower --model.lr or standardize the data"
            )

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        upgrade_state_dict(checkpoint["state_dict"])  # written before `design` held the statistics


def _checked_schema(schema: dict | None, in_features: int, out_features: int) -> dict:
    """`schema`, or columns x0, x1, ... and y0, ... when None; a ConfigError when it disagrees with the sizes."""
    schema = schema or default_schema([f"x{i}" for i in range(in_features)], [f"y{i}" for i in range(out_features)])
    if (len(schema["features"]), len(schema["targets"])) != (in_features, out_features):
        raise ConfigError(
            f"model.schema names {len(schema['features'])} features and {len(schema['targets'])}"
            f" targets, but in_features is {in_features} and out_features {out_features}"
        )
    return schema


def _check_arguments(values: dict) -> None:
    """Refuse the first argument outside `RANGES` or `CHOICES`, in one line naming it and what it allows."""
    for name, (ok, rule) in RANGES.items():
        if not ok(values[name]):
            raise ConfigError(f"model.{name} must be {rule}, got {values[name]}")
    for name, choices in CHOICES.items():
        if values[name] not in choices:
            raise ConfigError(f"model.{name} must be {' or '.join(map(repr, choices))}, got {values[name]!r}")


def _upgrade_and_follow_dtype(module: LinearRegression, state_dict: dict, prefix: str, *args) -> None:
    """Before `load_state_dict`: a state_dict written before `design` held the statistics gets its keys renamed,
    and one trained in float64 (see `LinearRegression._precondition`) makes the model float64, which loading into
    float32 tensors would round."""
    upgrade_state_dict(state_dict, prefix)
    saved = state_dict.get(prefix + "design.x_mean")
    if saved is not None and saved.dtype == torch.float64 and module.design.x_mean.dtype != torch.float64:
        module.double()
