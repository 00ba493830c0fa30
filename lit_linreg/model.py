"""The LightningModule: one `nn.Linear` trained with MSE and SGD.

The notebooks' loop, step by step, and where each step lives now:
    forward      y_pred = w * x          -> `forward` / `_errors` (nn.Linear)
    loss         ((y_pred - y)**2).mean() -> `training_step`
    gradient     l.backward()             -> Lightning, on the loss `training_step` returns
    update       w -= lr * w.grad         -> `configure_optimizers` (torch.optim.SGD), stepped by Lightning
    zero-grad    w.grad.zero_()           -> Lightning, before each step
"""

from __future__ import annotations

import math
from typing import Literal

import lightning as L
import numpy as np
import torch
from lightning.pytorch.utilities import rank_zero_info
from torch import nn
from torchmetrics import MeanAbsoluteError, MeanSquaredError, MetricCollection

from lit_linreg.encoding import TableEncoder, default_schema, design_names, needs_encoder
from lit_linreg.errors import ConfigError, DivergenceError
from lit_linreg.metrics import R2, say_if_beyond_float32

WHITEN_MAX_ERROR = 3.0
"""Largest relative error, as `LinearRegression.set_preconditioner` bounds it, that rounding the rows to the
training precision may put in a whitened direction; finer directions are left out of `precondition: qr`.

The bound is a worst case (rounding errors do not all line up with the weakest direction). Measured in float32
on synthetic tables of 5 features and 160 training rows, every direction kept, by the correlation matrix's
condition number (the bound): 1.2e12 (1.6) reaches a relative gap of 3e-4 in 2 epochs, 3.7e12 (2.8) 1e-3 in 2,
1.2e13 (5) stalls at 2e-3, 3.7e13 (9) diverges. On NIST's Filip (1.2e19) 3 keeps 8 of the 10 directions and
ends at a relative gap of 0.41, near the 0.37 of the exact answer of its float32-rounded rows; 2 keeps 7 (1.9).
"""


class LinearRegression(L.LightningModule):
    """Linear regression y = W x + b, trained by SGD on the mean squared error.

    Inputs and outputs are always in original units. When the DataModule standardizes, the model
    stores the training statistics as buffers (`x_mean`, `x_std`, `y_mean`, `y_std`) and learns in
    standardized units inside; a checkpoint alone therefore predicts from raw inputs. A table with
    categorical columns or filled-in missing values is encoded first, inside the model (see encoding.py),
    and its `schema` (names, categories) is a hyperparameter, so it travels in every checkpoint.

    Args:
        in_features: Input columns; the CLI links it from the DataModule.
        out_features: Output columns; the CLI links it from the DataModule.
        bias: Learn an intercept b.
        init: "default" is PyTorch's uniform init; "zeros" starts from W = 0, b = 0 as the notebooks do.
        lr: SGD learning rate, > 0; "auto" takes it from the training data's curvature (see `tune_sgd`).
        momentum: SGD momentum, in [0, 1); "auto" too (heavy-ball momentum for full-batch training).
        weight_decay: SGD weight decay (applies to W and b), >= 0.
        l1_strength: L1 penalty l1 * sum|W| added to the loss (W only, not b), >= 0.
        l2_strength: L2 penalty l2 * sum(W**2) added to the loss (W only, not b), >= 0.
        schema: The data's columns (see encoding.py); the CLI links it from the DataModule.
        net: The network from standardized inputs to standardized outputs; `nn.Linear` if None. One that
            defines `build(in_features, out_features)` gets the data's sizes from the model (see nets.py).
            `bias` and `init` apply to the default linear layer only; l1/l2 penalize every `weight`.
        precondition: "qr" trains the linear layer in the coordinates that the training statistics' R factor
            whitens (see `set_preconditioner`), where the loss's Hessian is the identity: a table converges in a
            few epochs whatever its condition number, up to what float32 rows resolve. "none" trains in
            standardized units, the notebooks' way. (The diagonal preconditioner is the DataModule's
            `standardize`.) "qr" falls back to "none", in one line, where it does not apply: a non-linear net,
            statistics too wide to keep R, no bias, or a penalty.
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
        _check("model.in_features", in_features, in_features >= 1, "at least 1")
        _check("model.out_features", out_features, out_features >= 1, "at least 1")
        if lr != "auto":
            _check("model.lr", lr, lr > 0, "> 0 or auto")
        if momentum != "auto":
            _check("model.momentum", momentum, 0 <= momentum < 1, "in [0, 1) or auto")
        self.lr, self.momentum = lr, momentum  # numbers once `tune_sgd` has resolved "auto"
        self.max_stable_lr: float | None = None  # full-batch gradient descent diverges at or above it
        self.lr_was_auto = False  # whether `lr auto` chose the learning rate (see `_lr_advice`)
        for name, value in (("weight_decay", weight_decay), ("l1_strength", l1_strength), ("l2_strength", l2_strength)):
            _check(f"model.{name}", value, value >= 0, ">= 0")
        if init not in ("default", "zeros"):
            raise ConfigError(f"model.init must be 'default' or 'zeros', got {init!r}")
        if precondition not in ("none", "qr"):
            raise ConfigError(f"model.precondition must be 'none' or 'qr', got {precondition!r}")
        # Primitives only, so checkpoints load with weights_only=True: a custom net is rebuilt from the config.
        self.save_hyperparameters(ignore=["net"])
        self.schema = schema or default_schema(
            [f"x{i}" for i in range(in_features)], [f"y{i}" for i in range(out_features)]
        )
        if (len(self.schema["features"]), len(self.schema["targets"])) != (in_features, out_features):
            raise ConfigError(
                f"model.schema names {len(self.schema['features'])} features and {len(self.schema['targets'])}"
                f" targets, but in_features is {in_features} and out_features {out_features}"
            )
        self.encoder = TableEncoder(self.schema) if needs_encoder(self.schema) else None
        self.design_names = design_names(self.schema)  # the columns the network sees, in order
        width = len(self.design_names)

        if net is None:
            net = nn.Linear(width, out_features, bias=bias)
            if init == "zeros":
                nn.init.zeros_(net.weight)
                if bias:
                    nn.init.zeros_(net.bias)
        elif callable(getattr(net, "build", None)):
            net.build(width, out_features)
        self.net = net
        # Identity until a standardizing DataModule provides statistics (see `setup`).
        self.register_buffer("x_mean", torch.zeros(width))
        self.register_buffer("x_std", torch.ones(width))
        self.register_buffer("y_mean", torch.zeros(out_features))
        self.register_buffer("y_std", torch.ones(out_features))
        self._scales = False  # whether the statistics are other than identity: else every step skips them
        if precondition == "qr":  # only then: checkpoints of "none" models keep the state_dict they always had
            self.register_buffer("whiten", torch.eye(width))  # (width, width) M: the net sees z @ M
        self._whitens = False  # whether `whiten` is other than the identity (see `set_preconditioner`)
        self.whitened_rank: int | None = None  # the rank of the standardized design, once whitened
        self.condition_before: float | None = None  # the Hessian's condition number that whitening took to 1
        self.register_load_state_dict_post_hook(lambda module, keys: module._note_scaling())

        metrics = MetricCollection(
            {"loss": MeanSquaredError(), "mae": MeanAbsoluteError(), "r2": R2()}  # R2: exact at any scale
        )
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
            reason = self._why_not_qr(moments)
            if reason is None:
                stats = stats or self._standardize_from(moments)
                reason = self.set_preconditioner(moments)  # None, or which directions it leaves out
            else:
                reason = f"precondition qr does not apply: {reason}; training without it"
            if reason:
                rank_zero_info(reason)
        if "auto" in (self.lr, self.momentum) and not self.is_linear:
            raise ConfigError("model.lr and model.momentum 'auto' apply to a linear model only: give numbers")
        if moments is not None and self.is_linear:
            full_batch = getattr(datamodule, "batch_size", 0) is None
            self.tune_sgd(moments, standardized=stats is not None, full_batch=full_batch)
        elif "auto" in (self.lr, self.momentum):
            raise ConfigError("model.lr and model.momentum 'auto' need a DataModule with train_statistics")

    def _why_not_qr(self, moments) -> str | None:
        """Why the statistics' R cannot precondition this fit, or None when it can."""
        hp = self.hparams
        if not self.is_linear:
            return "the network is not one linear layer, and whitening the inputs makes its loss no simpler"
        if moments is None:
            return "this DataModule computes no train_statistics"
        if moments.method == "moments":
            return f"{moments.width} columns of [1, X, Y] are too wide for the statistics to keep R"
        if self.net.bias is None:
            return "whitening centres the inputs, which a model without an intercept (bias: false) cannot undo"
        if hp.l1_strength or hp.l2_strength or hp.weight_decay:
            return "a penalty or weight decay would act on the whitened weights, not on W"
        return None

    def _standardize_from(self, moments) -> dict[str, torch.Tensor]:
        """Standardize with the training statistics even when the DataModule does not: whitening centres too."""
        values = {"x_mean": moments.x_mean, "x_std": moments.x_std, "y_mean": moments.y_mean, "y_std": moments.y_std}
        values = {name: torch.from_numpy(v) for name, v in values.items()}
        self.set_standardization(**values)
        return values

    @torch.no_grad()
    def set_preconditioner(self, moments) -> str | None:
        """Whiten the standardized design with the R factor of the statistics pass, so its Hessian is the identity.

        With Z the standardized centred design (N, d), the correlation matrix is C = Z'Z / N = P'P for the
        triangle P = R_x / (s sqrt(N)) that the statistics already hold (rows and columns 1 : 1 + d of R; their
        first row, the intercept, decouples since Z is centred). With P's SVD U S V', the network is fed
        z M, M = V S^-1 V' = C^(-1/2), whose columns have Z_w'Z_w / N = I: the loss in the layer's weights has
        the Hessian (2 / k) I, so gradient descent converges at one rate in every direction. Directions with
        S below d * eps * S_max (constant or duplicated columns) get 0: the minimum-norm answer, as `solve` gives.
        Predictions, coefficients and checkpoints stay in original units (see `coefficients`).

        The training rows are rounded to the training precision (float32): a relative error eps in a column whose
        mean is m and std s moves z by eps (1 + |m| / s), and z M by S_max / S_i times that in direction i. The
        directions where that exceeds `WHITEN_MAX_ERROR` are finer than the rows resolve: they are left out too
        (a truncated SVD, regularized at the rows' precision), and the line returned says so; None when every
        direction is kept.
        """
        d = moments.n_features
        triangle = moments.factor()[1 : 1 + d, 1 : 1 + d] / moments.x_std / math.sqrt(moments.n)  # (d, d) P
        _, singular, right = np.linalg.svd(triangle)  # P = U diag(S) V', right = V'
        exact = singular > singular[0] * d * np.finfo(np.float64).eps  # else a constant or duplicated column
        rounding = torch.finfo(self.whiten.dtype).eps * float(np.max(1 + np.abs(moments.x_mean) / moments.x_std))
        keep = exact & (singular * WHITEN_MAX_ERROR >= singular[0] * rounding)
        inverse = np.divide(1.0, singular, out=np.zeros_like(singular), where=keep)
        self.whiten.copy_(torch.from_numpy((right.T * inverse) @ right))  # (d, d) V S^-1 V'
        self.whitened_rank = int(keep.sum())
        self.condition_before = float(singular[0] / singular[exact][-1]) ** 2  # the Hessian's: P's squared
        self._note_scaling()
        if keep.sum() == exact.sum():
            return None
        precision = str(self.whiten.dtype).removeprefix("torch.")
        return (
            f"precondition qr whitens {keep.sum()} of the {exact.sum()} directions of the standardized design: the"
            f" others (condition number {self.condition_before:.3g} in all) are finer than {precision} rows resolve,"
            " so training leaves them out and stops short of the exact answer, which the end-of-fit summary gives"
        )

    def tune_sgd(self, moments, standardized: bool, full_batch: bool) -> None:
        """Resolve `lr: auto` and `momentum: auto` from the eigenvalues of the training loss's Hessian.

        With L and mu its largest and smallest (non-zero) eigenvalues, full-batch gradient descent diverges at
        lr >= 2 / L. Full batch, "auto" is Polyak's heavy ball, the fastest fixed lr and momentum for a
        quadratic: lr = 0.9 * 4 / (sqrt(L) + sqrt(mu))^2, momentum = ((sqrt(k) - 1) / (sqrt(k) + 1))^2 with k = L / mu;
        with a fixed momentum 0, lr = 2 / (L + mu). Mini-batches add noise: lr = 1 / L, momentum 0.

        Above `statistics.EXACT_MAX_COLUMNS` the eigenvalues are Lanczos estimates, a pass over the rows each
        (an upper bound on L, mu at least the true one: slower, never unstable), taken only for "auto".
        """
        from lit_linreg import statistics

        k, has_bias = moments.n_targets, self.net.bias is not None
        wide, how = moments.method == "moments", ""
        if wide and "auto" not in (self.lr, self.momentum):
            return  # the passes would only serve the divergence advice
        if wide and moments.rows is None:
            raise ConfigError(
                f"model.lr and model.momentum 'auto' need the training rows above {statistics.EXACT_MAX_COLUMNS}"
                " columns, and this DataModule's statistics have none: give numbers"
            )
        if self._whitens:  # (2 / k) I on the whitened weights and the bias; 0 on the directions dropped
            eigenvalues = np.full(self.whitened_rank + has_bias, 2.0 / k)
            how = f"whitened by the statistics' R, correlation condition number {self.condition_before:.3g} before; "
        elif wide:
            estimate = statistics.hessian_eigenvalues if standardized else statistics.raw_hessian_eigenvalues
            before = moments.rows.count
            eigenvalues = estimate(moments, k, has_bias)
            how = f"Lanczos estimates from {moments.rows.count - before} passes over the rows: "
        elif standardized:
            eigenvalues = statistics.hessian_eigenvalues(moments, k, has_bias)
        else:  # the raw design: H = 2 / (N k) [X 1]'[X 1] for each output
            columns = [*range(1, 1 + moments.n_features), *([0] if has_bias else [])]
            gram = moments.gram()[np.ix_(columns, columns)]
            eigenvalues = np.linalg.eigvalsh(2 * gram / (moments.n * k))
        largest = float(eigenvalues.max())
        smallest = float(eigenvalues[eigenvalues > largest * 1e-12].min())
        self.max_stable_lr = 2 / largest
        if "auto" not in (self.lr, self.momentum):
            return
        self.lr_was_auto = self.lr == "auto"
        if full_batch and self.momentum in ("auto", 0.0):
            if self.momentum == "auto":
                ratio = (math.sqrt(largest / smallest) - 1) / (math.sqrt(largest / smallest) + 1)
                # 0.9: a margin for the float32 training copy, whose curvature differs from the float64 one's.
                self.lr, self.momentum = 0.9 * 4 / (math.sqrt(largest) + math.sqrt(smallest)) ** 2, ratio**2
            else:
                self.lr = 2 / (largest + smallest)
        else:
            self.lr = 1 / largest if self.lr == "auto" else self.lr
            self.momentum = 0.0 if self.momentum == "auto" else self.momentum
        rank_zero_info(
            f"lr auto: {self.lr:.4g}, momentum {self.momentum:.4g} ({how}Hessian eigenvalues {smallest:.3g} to"
            f" {largest:.3g}, condition number {largest / smallest:.3g}; full batch: {full_batch})"
        )

    def set_standardization(
        self,
        x_mean: torch.Tensor,
        x_std: torch.Tensor,
        y_mean: torch.Tensor,
        y_std: torch.Tensor,
        fill: torch.Tensor | None = None,
    ) -> None:
        """Store the training statistics the model standardizes with (and the missing-value fills of the inputs)."""
        for name, value in (("x_mean", x_mean), ("x_std", x_std), ("y_mean", y_mean), ("y_std", y_std)):
            getattr(self, name).copy_(value)
        if fill is not None and self.encoder is not None:
            self.encoder.fill.copy_(fill)
        self._note_scaling()

    def _note_scaling(self) -> None:
        """Decide once, when the statistics change or load, whether the per-step arithmetic is needed at all."""
        means, stds = torch.cat([self.x_mean, self.y_mean]), torch.cat([self.x_std, self.y_std])
        self._scales = bool(means.any() or (stds != 1).any())
        whiten = getattr(self, "whiten", None)
        self._whitens = whiten is not None and not torch.equal(whiten, torch.eye(len(whiten), device=whiten.device))
        if self._whitens and self.whitened_rank is None:  # loaded from a checkpoint
            self.whitened_rank = int(torch.linalg.matrix_rank(whiten.double()))

    def _standardized(self, x: torch.Tensor) -> torch.Tensor:
        """Raw inputs (N, in_features) -> the standardized design (N, len(design_names)), whitened if preconditioned."""
        if self.encoder is not None:
            x = self.encoder(x)
        z = (x - self.x_mean) / self.x_std if self._scales else x
        return z @ self.whiten if self._whitens else z

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Predict from raw inputs (N, in_features); returns (N, out_features) in original units.

        A categorical input column holds codes: the position of each value in `schema["categories"][column]`.
        """
        y = self.net(self._standardized(x))
        return y * self.y_std + self.y_mean if self._scales else y

    def loss_per_output(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """The training loss of each output, (out_features,): the mean squared error in standardized units.

        Override this in a subclass for another loss (see the README, "Your own model"): `training_step`
        averages it over the outputs, adds the penalty and checks it is finite.
        """
        return (self.net(self._standardized(x)) - self._standardized_target(y)).pow(2).mean(dim=0)

    def _standardized_target(self, y: torch.Tensor) -> torch.Tensor:
        return (y - self.y_mean) / self.y_std if self._scales else y  # (B, out_features)

    @property
    def is_linear(self) -> bool:
        """Whether the network is one linear layer: then coefficients, inference and the loss gap mean something."""
        return isinstance(self.net, nn.Linear)

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
            prediction, target = self.net(self._standardized(x)), self._standardized_target(y)
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
                f" training stopped; {self._lr_advice()}"
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
        hp = self.hparams
        if "auto" in (self.lr, self.momentum):
            raise ConfigError("model.lr or model.momentum is 'auto' but no training data tuned it")
        return torch.optim.SGD(self.parameters(), lr=self.lr, momentum=self.momentum, weight_decay=hp.weight_decay)

    @torch.no_grad()
    def coefficients(self) -> tuple[torch.Tensor, torch.Tensor] | None:
        """W (out_features, design columns) and b (out_features,) in original units, as float64; None unless linear.

        Undoes the standardization: y = t * (W_s (x - m) / s + b_s) + u, with W_s = V M' for the whitened layer's
        weights V when preconditioned (the net sees z M). Callbacks that need coefficients call this and stand
        aside on None.
        """
        if not self.is_linear:
            return None
        w_s = self.net.weight.double()
        if self._whitens:
            w_s = w_s @ self.whiten.double().T
        b_s = self.net.bias.double() if self.net.bias is not None else torch.zeros(len(w_s), dtype=w_s.dtype)
        s, m, t, u = (getattr(self, n).double() for n in ("x_std", "x_mean", "y_std", "y_mean"))
        b_s = b_s.to(w_s.device)
        weight = t[:, None] * w_s / s[None, :]
        bias = t * (b_s - w_s @ (m / s)) + u
        return weight, bias

    def _lr_advice(self) -> str:
        """What to change after a divergence: the learning rate the data allows, when the statistics are known."""
        if self.max_stable_lr is None:
            return "lower --model.lr or standardize the data"
        if self.lr_was_auto:  # stable for the full batch: small batches' gradients are noisier
            return (
                f"lr auto chose {self.lr:.4g} for the full batch: give a lower --model.lr or a larger --data.batch_size"
            )
        return f"the data allows lr < {self.max_stable_lr:.4g} (full batch): lower --model.lr, or use --model.lr auto"

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        # Never let a diverged state reach disk: the last finite checkpoint stays the newest one. Every tensor
        # counts, the standardization buffers (y_std, ...) as much as the weights. (Resuming lets the configured
        # optimizer settings win only where they changed: see `lit_linreg.checkpoint.RunStamp`.)
        state = checkpoint["state_dict"]
        bad = [name for name, t in state.items() if t.is_floating_point() and not torch.isfinite(t).all()]
        if bad:
            raise DivergenceError(
                f"{', '.join(bad)} became non-finite by the end of epoch {self.current_epoch}: nothing was saved;"
                " lower --model.lr or standardize the data"
            )

    def optimizer_name(self) -> str:
        """The class name of the optimizer training this model: `SGD` unless `--optimizer` chose another."""
        return type(self.trainer.optimizers[0]).__name__


def _check(name: str, value: float, ok: bool, rule: str) -> None:  # noqa: D103
    if not ok:
        raise ConfigError(f"{name} must be {rule}, got {value}")
