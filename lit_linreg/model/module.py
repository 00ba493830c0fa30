"""The LightningModule: one `nn.Linear` trained with MSE and SGD.

The notebooks' loop, step by step, and where each step lives now:
    forward      y_pred = w * x          -> `forward` / `loss_per_output` (nn.Linear)
    loss         ((y_pred - y)**2).mean() -> `training_step`
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
from lit_linreg.model import blocked_linear, optim, standardize
from lit_linreg.model.metrics import R2, say_if_beyond_float32
from lit_linreg.model.nets import sized_net
from lit_linreg.model.precondition import whitening_for, why_not_qr
from lit_linreg.tables.encoding import TableEncoder, default_schema, design_names, needs_encoder

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


class LinearRegression(L.LightningModule):
    """Linear regression y = W x + b, trained by SGD on the mean squared error.

    Inputs and outputs are always in original units. When the DataModule standardizes, the model
    stores the training statistics as buffers (`x_mean`, `x_std`, `y_mean`, `y_std`) and learns in
    standardized units inside (see standardize.py); a checkpoint alone therefore predicts from raw inputs. A
    table with categorical columns or filled-in missing values is encoded first, inside the model (see
    encoding.py), and its `schema` (names, categories) is a hyperparameter, so it travels in every checkpoint.

    Long because: Lightning calls its hooks on this one class, and the statistics stay its own buffers (their
    state_dict keys are every checkpoint's), so the few lines that use them stay beside them. The ideas themselves
    live in standardize.py, precondition.py, optim.py and nets.py; what remains reads top to bottom as one fit.

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
        schema: The data's columns (see encoding.py); the CLI links it from the DataModule.
        net: The network from standardized inputs to standardized outputs; `nn.Linear` if None. One that
            defines `build(in_features, out_features)` gets the data's sizes from the model (see nets.py).
            `bias` and `init` apply to the default linear layer only; l1/l2 penalize every `weight`.
        precondition: "qr" trains the linear layer in the coordinates that the training statistics' R factor
            whitens, where the loss's Hessian is the identity: a few epochs whatever the condition number (see
            precondition.py). "none" trains in standardized units, the notebooks' way. "qr" falls back to "none",
            in one line, where it does not apply: a non-linear net, statistics too wide to keep R, no bias, or a
            penalty.
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
        self.encoder = TableEncoder(self.schema) if needs_encoder(self.schema) else None
        self.design_names = design_names(self.schema)  # the columns the network sees, in order
        width = len(self.design_names)
        self.net = sized_net(net, width, out_features, bias, init)
        standardize.add_buffers(self, width, out_features, whiten=precondition == "qr")  # identity until `setup`
        self._scales = False  # whether the statistics are other than identity: else every step skips them
        self._whitens = False  # whether `whiten` is other than the identity (see `set_preconditioner`)
        self.whitened_rank: int | None = None  # the rank of the standardized design, once whitened
        self.condition_before: float | None = None  # the Hessian's condition number that whitening took to 1
        self.register_load_state_dict_pre_hook(_follow_checkpoint_dtype)
        self.register_load_state_dict_post_hook(_note_scaling_after_load)

        # R2: exact at any scale.
        metrics = MetricCollection({"loss": MeanSquaredError(), "mae": MeanAbsoluteError(), "r2": R2()})
        # float64 states: squared errors of targets near 1e20 (or 1e-20) overflow (or vanish) in float32.
        self.val_metrics = metrics.clone(prefix="val/").set_dtype(torch.float64)
        self.test_metrics = metrics.clone(prefix="test/").set_dtype(torch.float64)
        self._said_beyond_float32: set[str] = set()  # metrics TensorBoard cannot hold, said once each

    def __setattr__(self, name: str, value: object) -> None:
        # Lightning sets `_current_fx_name` twice for every hook it calls, about fifty times a training step, and
        # nn.Module.__setattr__ checks each value against parameters, buffers and submodules: for a string name,
        # which is none of those, a plain attribute is the same thing at a tenth of the cost.
        if name == "_current_fx_name":
            object.__setattr__(self, name, value)
        else:
            super().__setattr__(name, value)

    def setup(self, stage: str) -> None:
        # The one place the model reads from the DataModule: statistics of the training split exist only
        # after DataModule.setup, which Lightning runs just before this hook.
        if stage != "fit":  # the checkpoint holds them
            return
        datamodule = getattr(self.trainer, "datamodule", None)
        stats = getattr(datamodule, "statistics", None)
        if stats is not None:
            self.set_standardization(**stats)
        moments = getattr(datamodule, "train_statistics", None)
        if self.hparams.precondition == "qr":
            stats = self._precondition(moments, stats)
        if "auto" in (self.lr, self.momentum) and not self.is_linear:
            raise ConfigError("model.lr and model.momentum 'auto' apply to a linear model only: give numbers")
        if moments is not None and self.is_linear:
            full_batch = getattr(datamodule, "batch_size", 0) is None
            self.tune_sgd(moments, standardized=stats is not None, full_batch=full_batch)
        elif "auto" in (self.lr, self.momentum):
            raise ConfigError("model.lr and model.momentum 'auto' need a DataModule with train_statistics")

    def _precondition(self, moments, stats: dict | None) -> dict | None:
        """`precondition: qr` where it applies, saying in one line where it does not; returns the statistics used."""
        hp = self.hparams
        penalized = bool(hp.l1_strength or hp.l2_strength or hp.weight_decay)
        reason = why_not_qr(moments, self.is_linear, getattr(self.net, "bias", None) is not None, penalized)
        if reason is None:
            if not stats:  # whitening centres, so it standardizes even where the DataModule does not
                stats = standardize.from_moments(moments)
                self.set_standardization(**stats)
            reason = self.set_preconditioner(moments, getattr(self.trainer, "datamodule", None))
            if self.x_mean.dtype == torch.float64:  # made float64 just now: the statistics, without float32's rounding
                self.set_standardization(**stats)
        else:
            reason = f"precondition qr does not apply: {reason}; training without it"
        if reason:
            rank_zero_info(reason)
        return stats

    @torch.no_grad()
    def set_preconditioner(self, moments, datamodule=None) -> str | None:
        """Whiten the standardized design by the statistics' R (see `precondition.whitening`); its line, or None.

        Where float32 rows cannot resolve every direction of the table and float64 rows resolve more, a DataModule
        that can hold its rows in float64 (`hold_float64`) is asked to, and the model trains in float64 too; where
        it cannot, the line says why.
        """
        found, line = whitening_for(moments, datamodule)
        if found.precision == "float64":
            self.double()  # the rows' precision all the way: a float32 layer would round what they resolve
        self.whiten.copy_(found.matrix)
        self.whitened_rank, self.condition_before = found.rank, found.condition_before
        self._note_scaling()
        return line

    def tune_sgd(self, moments, standardized: bool, full_batch: bool) -> None:
        """Resolve `lr: auto` and `momentum: auto` from the loss's Hessian (see optim.py); note the lr it allows."""
        auto = "auto" in (self.lr, self.momentum)
        if moments.method == "moments" and not auto:
            return  # the passes would only serve the divergence advice
        whitened = (self.whitened_rank, self.condition_before) if self._whitens else None
        has_bias = self.net.bias is not None
        eigenvalues, how = optim.hessian_eigenvalues(moments, has_bias, standardized, whitened)
        self.max_stable_lr = optim.max_stable_lr(eigenvalues)
        if auto:
            self.lr, self.momentum, line = optim.auto_sgd(self.lr, self.momentum, eigenvalues, full_batch, how)
            rank_zero_info(line)

    def set_standardization(
        self,
        x_mean: torch.Tensor,
        x_std: torch.Tensor,
        y_mean: torch.Tensor,
        y_std: torch.Tensor,
        fill: torch.Tensor | None = None,
    ) -> None:
        """Store the training statistics the model standardizes with (and the missing-value fills of the inputs)."""
        for name, value in zip(standardize.STATISTICS, (x_mean, x_std, y_mean, y_std), strict=True):
            getattr(self, name).copy_(value)
        if fill is not None and self.encoder is not None:
            self.encoder.fill.copy_(fill)
        self._note_scaling()

    def _note_scaling(self) -> None:
        """Decide once, when the statistics change or load, whether the per-step arithmetic is needed at all."""
        self._scales = standardize.scales(self.x_mean, self.x_std, self.y_mean, self.y_std)
        self._whitens = standardize.whitens(getattr(self, "whiten", None))
        if self._whitens and self.whitened_rank is None:  # loaded from a checkpoint
            self.whitened_rank = int(torch.linalg.matrix_rank(self.whiten.double()))

    def _standardized(self, x: torch.Tensor) -> torch.Tensor:
        """Raw inputs (N, in_features) -> the standardized design (N, len(design_names)), whitened if preconditioned."""
        if self.encoder is not None:
            x = self.encoder(x)
        z = standardize.forward(x, self.x_mean, self.x_std) if self._scales else x
        return z @ self.whiten if self._whitens else z

    def _net_output(self, x: torch.Tensor) -> torch.Tensor:
        """The network on raw inputs (N, in_features): its output (N, out_features), in standardized units.

        A large batch through the linear layer goes by row blocks (see blocked_linear.py): no copy of its rows.
        """
        if x.dtype != self.x_mean.dtype:  # float32 rows for a model trained in float64 (see `set_preconditioner`)
            x = x.to(self.x_mean.dtype)
        if self._scales and type(self.net) is nn.Linear and blocked_linear.applies(x):  # not a subclass's forward
            design = self.encoder(x) if self.encoder is not None else x
            whiten = self.whiten if self._whitens else None
            return blocked_linear.standardized_linear(design, self.x_mean, self.x_std, whiten, self.net)
        return self.net(self._standardized(x))

    def _standardized_target(self, y: torch.Tensor) -> torch.Tensor:
        if y.dtype != self.y_mean.dtype:  # float32 rows for a model trained in float64 (see `set_preconditioner`)
            y = y.to(self.y_mean.dtype)
        return standardize.forward(y, self.y_mean, self.y_std) if self._scales else y  # (B, out_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Predict from raw inputs (N, in_features); returns (N, out_features) in original units.

        A categorical input column holds codes: the position of each value in `schema["categories"][column]`.
        """
        y = self._net_output(x)
        return standardize.inverse(y, self.y_mean, self.y_std) if self._scales else y

    @torch.no_grad()
    def coefficients(self) -> tuple[torch.Tensor, torch.Tensor] | None:
        """W (out_features, design columns) and b (out_features,) in original units, as float64; None unless linear.

        Callbacks that need coefficients call this and stand aside on None.
        """
        if not self.is_linear:
            return None
        whiten = self.whiten if self._whitens else None
        return standardize.coefficients(
            self.net.weight, self.net.bias, self.x_mean, self.x_std, self.y_mean, self.y_std, whiten
        )

    @property
    def is_linear(self) -> bool:
        """Whether the network is one linear layer: then coefficients, inference and the loss gap mean something."""
        return isinstance(self.net, nn.Linear)

    def loss_per_output(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """The training loss of each output, (out_features,): the mean squared error in standardized units.

        Override this in a subclass for another loss (see docs/model.md, "Your own model"): `training_step`
        averages it over the outputs, adds the penalty and checks it is finite.
        """
        return (self._net_output(x) - self._standardized_target(y)).pow(2).mean(dim=0)

    def penalty(self) -> torch.Tensor | float:
        """The L1 and L2 penalties on every `weight` (W of the linear model, never b); 0.0 when both are 0."""
        l1, l2 = self.hparams.l1_strength, self.hparams.l2_strength
        if not (l1 or l2):
            return 0.0
        weights = [p for name, p in self.net.named_parameters() if name.endswith("weight")]
        return sum(l1 * w.abs().sum() + l2 * w.pow(2).sum() for w in weights)

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        x, y = batch
        every = self.trainer.log_every_n_steps
        logs = every and (self.global_step + 1) % every == 0
        if type(self).loss_per_output is LinearRegression.loss_per_output:
            # The default loss as one fused op, the same mean as loss_per_output(x, y).mean() (every output has
            # B rows) at two thirds of the cost a step: the per-output means only when this step logs them.
            prediction, target = self._net_output(x), self._standardized_target(y)
            loss = nn.functional.mse_loss(prediction, target)
            per_output = (prediction.detach() - target).pow(2).mean(dim=0) if logs and self._scales else loss
        else:
            per_output = self.loss_per_output(x, y)
            loss = per_output.mean()
        if self.hparams.l1_strength or self.hparams.l2_strength:
            loss = loss + self.penalty()
        if not torch.isfinite(loss):
            raise DivergenceError(
                f"the training loss became {loss.item()} at epoch {self.current_epoch}, step {self.global_step}:"
                f" training stopped; {optim.lr_advice(self.lr, self.max_stable_lr, self.lr_was_auto)}"
            )
        # Logged in original target units and before this step's update, as the notebooks print it; only on the
        # steps the logger writes (every `log_every_n_steps`), as a `self.log` call costs more than this step.
        if logs:
            if self._scales:  # in float64: the square of a y_std near 1e20 overflows float32
                in_units = (per_output.double() * self.y_std.double().square()).mean()
            else:
                in_units = per_output.mean()
            self.log("train/loss", in_units, prog_bar=True, batch_size=len(x))
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
        # compute() caches its result, so logging val/loss afterwards does not sync or compute it again.
        # The value is already synced over DDP ranks; sync_dist only marks it as the same on every rank.
        val_loss = self.val_metrics["loss"].compute()
        self.log("hp_metric", val_loss, sync_dist=True)
        say_if_beyond_float32("val/loss", float(val_loss), self._said_beyond_float32)

    def predict_step(self, batch: tuple[torch.Tensor], batch_idx: int) -> torch.Tensor:
        return self(batch[0])

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return optim.sgd(self.parameters(), self.lr, self.momentum, self.hparams.weight_decay)

    def optimizer_name(self) -> str:
        """The class name of the optimizer training this model: `SGD` unless `--optimizer` chose another."""
        return type(self.trainer.optimizers[0]).__name__

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        # Never let a diverged state reach disk: the last finite checkpoint stays the newest one. Every tensor
        # counts, the standardization buffers (y_std, ...) as much as the weights. (Resuming lets the configured
        # optimizer settings win only where they changed: see `lit_linreg.cli.checkpoint.RunStamp`.)
        state = checkpoint["state_dict"]
        bad = [name for name, t in state.items() if t.is_floating_point() and not torch.isfinite(t).all()]
        if bad:
            raise DivergenceError(
                f"{', '.join(bad)} became non-finite by the end of epoch {self.current_epoch}: nothing was saved;"
                " lower --model.lr or standardize the data"
            )


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


def _follow_checkpoint_dtype(module: LinearRegression, state_dict: dict, prefix: str, *args) -> None:
    """Before `load_state_dict`: a checkpoint trained in float64 (see `set_preconditioner`) makes the model float64,
    which loading into float32 tensors would round."""
    saved = state_dict.get(prefix + "x_mean")
    if saved is not None and saved.dtype == torch.float64 and module.x_mean.dtype != torch.float64:
        module.double()


def _note_scaling_after_load(module: LinearRegression, incompatible_keys: object) -> None:
    """After `load_state_dict`: the statistics changed. A function, not a lambda, so the model pickles."""
    module._note_scaling()
