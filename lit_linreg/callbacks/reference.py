"""The exact least-squares reference: the optimum of the training split, how far SGD still is from it, and why.

It makes one extra pass over the training data at the start of fit (none where the DataModule has its own
statistics), compares each epoch's coefficients with the optimum, and prints the fit beside it at the end.
"""

from __future__ import annotations

import copy
from pathlib import Path
from types import SimpleNamespace

import lightning as L
import numpy as np
import torch
from lightning.pytorch.utilities import rank_zero_only

from lit_linreg import statistics
from lit_linreg.callbacks.coefficients import (
    _by_term,
    _has_bias,
    coefficient_records,
    format_summary,
    write_coefficients,
)
from lit_linreg.callbacks.gap import arithmetic, at_floor, precision_floor, shortfall, solve_by_passes
from lit_linreg.callbacks.scalars import log_epoch_scalars
from lit_linreg.model.blocked_linear import block_rows


class LeastSquaresReference(L.Callback):
    """The exact least-squares answer of the training split, how far SGD still is from it, and why.

    At the start of fit it takes the DataModule's one pass of sufficient statistics (`train_statistics`, see
    `lit_linreg.statistics`; a DataModule without one gets a pass over its train loader here) and from them alone:

    - solves the least-squares problem exactly (QR, refined), logging `optimum/loss`, its train MSE;
    - scores that answer on the validation rows, `optimum/val_loss`: a baseline for any model;
    - prints and logs the diagnostics: the Hessian's condition number, the largest stable learning rate,
      the nearly collinear columns (`diagnostics/condition_number`, `diagnostics/max_stable_lr`).

    Each epoch it logs, for a model that offers `coefficients()` (W and b in original units):
    `optimum/loss_gap` (the model's train MSE minus the optimum's, >= 0: a float64 full pass of the model's W and b
    over the training rows, taken from the statistics as ||R (theta - theta*)||^2 / N, see `LeastSquares.gap`),
    `optimum/relative_gap` (that over the optimum's MSE) and `optimum/weight_gap`. Only where the optimum's MSE is
    below what the rows' precision resolves at the table's scale (`precision_floor`: an exact fit) is the gap over
    that floor instead, said in one line. With `stop_at_relative_gap` set, training stops once the relative gap is
    at or below it; a gap over the floor goes on until it stalls (`stop_when_stalled`), as close as the rows' and
    the model's arithmetic take it. At the end of fit it prints the gap, where it stopped short and why, the fit
    beside the optimum and a statistician's summary (as R's `summary(lm)`), and writes every coefficient to
    `coefficients.csv` in the run's log directory.

    Above `statistics.EXACT_MAX_COLUMNS` columns the optimum comes from conjugate gradient over the training
    rows, said in one line (passes, residual reached); each `optimum/loss_gap` then costs one more pass. The
    diagnostics and the summary's inference need O(d^3) and are skipped, with one line; an unconverged solve
    logs no `optimum/*` tag at all.

    Args:
        enabled: Compute and log the reference.
        max_table_coefficients: Coefficients printed at most at the end of fit (largest |t| first); all of
            them are in coefficients.csv.
        stop_at_relative_gap: Stop training once `optimum/relative_gap` is at or below this (not where it is over the
            rows' precision floor: that fit stops when stalled); None never stops.
        refine_to_relative_gap: Once at `stop_at_relative_gap`, go on while each epoch at least halves the gap, down
            to this: a gap g leaves the weights sqrt(g (N - p)) standard errors from the optimum, so the fit column of
            the summary agrees with least squares in more digits, at an epoch or two where the gap still falls that
            fast (a whitened epoch gains about 100x), and none where the rows' float32 rounding holds it; None
            stops at `stop_at_relative_gap`.
        stop_when_stalled: Stop training once `optimum/relative_gap` has not fallen 1 % below its best in this
            many epochs (float32 rounding or mini-batch noise is its floor), or in sqrt(condition number) epochs
            where that is longer: heavy ball's gap can stay flat about that long and still converge (a model
            trained whitened has condition number 1). Tables too wide for the diagnostics are never stopped for
            it; None stops none.
    """

    def __init__(
        self,
        enabled: bool = True,
        max_table_coefficients: int = 16,
        stop_at_relative_gap: float | None = None,
        refine_to_relative_gap: float | None = None,
        stop_when_stalled: int | None = None,
    ) -> None:
        self.enabled = enabled
        self.max_table_coefficients = max_table_coefficients
        self.stop_at_relative_gap, self.refine_to_relative_gap = stop_at_relative_gap, refine_to_relative_gap
        self.stop_when_stalled = stop_when_stalled
        self.fit: statistics.LeastSquares | None = None
        self.loss: float | None = None
        self.model_loss: float | None = None
        self.gaps: list[float] = []  # optimum/relative_gap of each epoch of this fit, for `shortfall`

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not self.enabled:
            return
        stats = getattr(trainer.datamodule, "train_statistics", None) or statistics_from_loader(trainer, pl_module)
        self.stats, self.has_bias, self.gaps = stats, _has_bias(pl_module), []
        self.stall_epochs: int | None = None  # see `stop_when_stalled`; set with the diagnostics
        self.stalled = False  # whether `stop_when_stalled` ended the run
        self.log_dir = Path(trainer.log_dir or trainer.default_root_dir)  # a collective: every rank asks here
        if stats.method != "moments":
            self.fit = statistics.solve(stats, self.has_bias)
        else:
            self.fit = solve_by_passes(stats, self.has_bias, trainer.is_global_zero)
            if self.fit is None:
                return
        self.loss = self.fit.mse
        self.floor = precision_floor(stats, self.fit, arithmetic(trainer, pl_module))
        self.floored = self.floor.mse > self.loss  # the optimum's MSE is finer than the rows resolve
        self.scale = self.floor.mse if self.floored else self.loss  # what the gap is relative to
        self.val_loss = _val_loss(self.fit, trainer, pl_module)
        scalars = {"optimum/loss": self.loss}
        if self.val_loss is not None:
            scalars["optimum/val_loss"] = self.val_loss
        if stats.method == "moments":
            log_epoch_scalars(trainer, scalars)
            self._say_floor(trainer)
            return
        names = getattr(pl_module, "design_names", None)
        self.diagnostics = statistics.diagnose(stats, stats.n_targets, self.has_bias, names)
        scalars["diagnostics/condition_number"] = self.diagnostics.condition_number
        scalars["diagnostics/max_stable_lr"] = self.diagnostics.max_stable_lr
        log_epoch_scalars(trainer, scalars)
        whitened = getattr(getattr(pl_module, "design", None), "whitens", False)  # see LinearRegression._precondition
        if self.stop_when_stalled:
            trained = 1.0 if whitened else self.diagnostics.condition_number
            self.stall_epochs = max(self.stop_when_stalled, int(min(np.sqrt(trained), 1e12)))
        if trainer.is_global_zero:
            problem = f"standardized problem: {self.diagnostics.describe()}"
            if whitened:
                problem += "; the model trains it whitened by R, at condition number 1"
            print(f"least squares: train MSE {self.loss:.6g}; {problem}")
            if stats.method == "gram":  # normal equations square the condition number
                digits = max(0.0, 15.9 - 2 * np.log10(max(self.diagnostics.condition_number, 1.0)))
                print(
                    f"least squares from the normal equations ({stats.n} rows > {statistics.QR_MAX_ROWS}, or wide):"
                    f" about {digits:.0f} significant digits"
                )
        self._say_floor(trainer)

    def _say_floor(self, trainer: L.Trainer) -> None:
        """The line saying the gap is over the rows' precision floor, not the optimum's MSE, where it is."""
        if self.floored and trainer.is_global_zero:
            print(
                f"relative gap: over the {self.floor.precision} floor {self.floor.mse:.3g}, not over the optimum's MSE"
                f" {self.loss:.3g}, which {self.floor.precision} rows cannot resolve: {self.floor.describe()}"
            )

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        coefficients = pl_module.coefficients() if self.fit is not None and hasattr(pl_module, "coefficients") else None
        if coefficients is None:  # no model to compare, or a network without coefficients: the baseline stands
            return
        weight, bias = (t.cpu().numpy() for t in coefficients)
        loss_gap = max(self.fit.gap(weight, bias if self.has_bias else None), 0.0)
        self.model_loss = self.loss + loss_gap
        relative = loss_gap / self.scale
        self.gaps.append(relative)
        weight, bias = self.fit.estimable(weight, bias if self.has_bias else None)  # aliased columns: as the fit's
        weight_gap = np.sqrt(np.square(weight - self.fit.weight).sum() + np.square(bias - self.fit.bias).sum())
        log_epoch_scalars(
            trainer,
            {"optimum/loss_gap": loss_gap, "optimum/relative_gap": relative, "optimum/weight_gap": float(weight_gap)},
        )
        if self.stop_at_relative_gap is not None and not self.floored:  # a floored fit stops once stalled
            trainer.should_stop |= self._reached(relative)
        if self.stall_epochs is not None and len(self.gaps) > self.stall_epochs:
            before = min(self.gaps[: -self.stall_epochs])  # the best gap until `stall_epochs` epochs ago
            self.stalled = min(self.gaps[-self.stall_epochs :]) > 0.99 * before
            trainer.should_stop |= self.stalled

    def _reached(self, relative: float) -> bool:
        """Whether the gap is where the run stops: at `stop_at_relative_gap`, and refined as far as it pays."""
        if relative > self.stop_at_relative_gap:
            return False
        refine = self.refine_to_relative_gap
        if refine is None or relative <= refine:
            return True
        before = self.gaps[-2] if len(self.gaps) > 1 else np.inf
        return relative > before / 2  # the last epoch did not halve it: rounding holds it here

    @rank_zero_only
    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.fit is None or trainer.sanity_checking:
            return
        metrics = trainer.callback_metrics
        optimizer = trainer.optimizers[0].__class__.__name__ if trainer.optimizers else "none"
        rows = [
            ("train MSE", self.model_loss, self.loss),
            ("val MSE", _item(metrics.get("val/loss")), self.val_loss),
            ("val R2", _item(metrics.get("val/r2")), None),
        ]
        names = getattr(pl_module, "design_names", None)
        wide = self.stats.method == "moments"  # estimates only: inference needs (X'X)^-1
        summaries = _estimates(self.fit, names) if wide else statistics.summarize(self.stats, self.has_bias, names)
        linear = hasattr(pl_module, "coefficients") and pl_module.coefficients() is not None
        fitted = _by_term(pl_module, self.fit) if linear else {}
        records = coefficient_records(
            pl_module.schema["targets"] if hasattr(pl_module, "schema") else None, summaries, fitted
        )
        print(f"optimizer: {optimizer}")
        if self.model_loss is not None:
            epochs = trainer.current_epoch
            line = f"relative gap {self.gaps[-1]:.3g} after {epochs} epochs,"
            line += f" {self.stats.n} training rows x {self.stats.n_features} columns"
            if self.floored:
                line += f", over the {self.floor.precision} floor {self.floor.mse:.3g} (see above)"
                print(line)
                diagnostics = getattr(self, "diagnostics", None)
                condition = diagnostics.condition_number if diagnostics is not None else None
                print(at_floor(self.floor, self.model_loss, self.loss, self.gaps, epochs, self.stalled, condition))
            else:
                print(line)
                faster = _faster(pl_module, self.stats, self.has_bias)
                short = shortfall(self.gaps, self.stop_at_relative_gap, epochs, faster, self.stalled)
                if short:
                    print(short)
        print(format_table(rows, optimizer))
        shown = sorted(records, key=lambda r: -abs(r["t"]) if np.isfinite(r["t"]) else 0.0)
        shown = shown[: self.max_table_coefficients]
        targets = list(dict.fromkeys(r["target"] for r in records))
        print(format_summary(shown, [] if wide else summaries, [] if wide else targets, optimizer))
        path = self.log_dir / "coefficients.csv"
        write_coefficients(path, records)
        if len(shown) < len(records):
            print(f"({len(records) - len(shown)} more coefficients in {path}, the largest |t| shown first)")
        if not linear:
            print("(coefficients, the inference table and optimum/loss_gap apply to a linear model only)")


def _val_loss(fit: statistics.LeastSquares, trainer: L.Trainer, pl_module: L.LightningModule) -> float | None:
    """The least-squares answer's MSE on the validation rows (one pass, float64), or None without them.

    By blocks of rows: a full batch's float64 copy would double the rows' memory (see blocked_linear.py).
    """
    loader = trainer.datamodule.val_dataloader() if trainer.datamodule is not None else None
    if loader is None:
        return None
    encode = _float64_encoder(pl_module)
    weight, bias = torch.from_numpy(fit.weight), torch.from_numpy(fit.bias)
    sse, count = 0.0, 0
    with torch.no_grad():
        for batch_x, batch_y in loader:
            rows = block_rows(batch_x.shape[1])
            for start in range(0, len(batch_x), rows):
                x, y = batch_x[start : start + rows].cpu().double(), batch_y[start : start + rows].cpu().double()
                x = encode(x) if encode is not None else x
                sse += (x @ weight.T + bias - y).square().sum().item()
                count += y.numel()
    total = trainer.strategy.reduce(torch.tensor([sse, count], dtype=torch.float64), reduce_op="sum")
    return float(total[0] / total[1]) if total[1] > 0 else None


def _faster(pl_module: L.LightningModule, stats: statistics.SufficientStatistics, has_bias: bool) -> str | None:
    """The flag that trains this fit at condition number 1, when it did not use it and it applies."""
    hparams = getattr(pl_module, "hparams", {})
    penalized = any(hparams.get(name) for name in ("l1_strength", "l2_strength", "weight_decay"))
    if hparams.get("precondition") != "none" or not getattr(pl_module, "is_linear", False) or penalized:
        return None  # see LinearRegression._why_not_qr
    return None if stats.method == "moments" or not has_bias else "--model.precondition qr"


def format_table(rows: list[tuple[str, float | None, float | None]], optimizer: str = "SGD") -> str:
    """The end-of-fit table: one row per quantity, the fit (`optimizer`'s, named in its title) beside the optimum."""

    def cell(v: float | None) -> str:
        return f"{v:>14.6g}" if v is not None else f"{'':>14}"

    width = max(12, *(len(name) + 2 for name, _, _ in rows))
    lines = [f"{'':<{width}}{optimizer + ' fit':>14}{'least squares':>14}"]
    lines += [f"{name:<{width}}{cell(fit)}{cell(best)}" for name, fit, best in rows]
    return "\n".join(lines)


def _item(value: torch.Tensor | None) -> float | None:
    return None if value is None else float(value)


def _estimates(fit: statistics.LeastSquares, names: list[str] | None) -> list[SimpleNamespace]:
    """Per target, the least-squares estimates as `coefficient_records` reads a summary, the inference NaN."""
    names = names or [f"x{j}" for j in range(fit.weight.shape[1])]
    out = []
    for weight, bias in zip(fit.weight, fit.bias, strict=True):
        estimate = np.concatenate([[bias], weight]) if fit.fit_intercept else weight
        nan = np.full(len(estimate), np.nan)
        labels = (["(intercept)"] if fit.fit_intercept else []) + list(names)
        out.append(SimpleNamespace(names=labels, estimate=estimate, std_error=nan, t_value=nan, p_value=nan))
        out[-1].conf_low = out[-1].conf_high = nan
    return out


def statistics_from_loader(trainer: L.Trainer, pl_module: L.LightningModule) -> statistics.SufficientStatistics:
    """One pass over this rank's training batches, gathered over the ranks: for a DataModule without its own.

    Statistics too wide for p x p matrices ("moments") get a `statistics.RowPasses` over the same loader.
    """
    stats = None
    for x, y in _loader_blocks(trainer, pl_module):
        stats = stats or statistics.SufficientStatistics(x.shape[1], y.shape[1])
        stats.update(x, y)
    if trainer.world_size > 1:
        gathered = trainer.strategy.all_gather(torch.from_numpy(stats.to_array()))
        stats = statistics.SufficientStatistics.combine(
            [statistics.SufficientStatistics.from_array(a) for a in gathered.cpu().numpy()]
        )
    if stats.method == "moments":

        def reduce(values: np.ndarray) -> np.ndarray:
            tensor = torch.from_numpy(values).to(trainer.strategy.root_device)
            return trainer.strategy.reduce(tensor, reduce_op="sum").cpu().numpy()

        stats.rows = statistics.RowPasses(lambda: _loader_blocks(trainer, pl_module), stats.mean, reduce)
    return stats


def _loader_blocks(trainer: L.Trainer, pl_module: L.LightningModule):
    """This rank's training batches as float64 numpy (x, y), encoded as the model encodes them."""
    encode = _float64_encoder(pl_module)
    for x, y in trainer.train_dataloader:
        x, y = x.cpu().double(), y.cpu().double()
        x = encode(x) if encode is not None else x
        yield x.numpy(), y.numpy()


def _float64_encoder(pl_module: L.LightningModule):
    """A float64 copy, on the CPU, of the model's encoder (see encoding.py), or None: the model's own stays as it
    is, float32 or float64 (a table beyond float32, see `LinearRegression._precondition`)."""
    encode = getattr(getattr(pl_module, "design", None), "encoder", None)
    return copy.deepcopy(encode).cpu().double() if encode is not None else None
