"""predictions.csv: the rows predicted for, then one column per target."""

from __future__ import annotations

import csv
from pathlib import Path

import lightning as L
import torch

from lit_linreg.tables.columns import prediction_columns


class PredictionWriter(L.Callback):
    """Writes `predictions.csv` in the run directory: the rows predicted for, then one column per target.

    When the DataModule read a predict file (`predict_table`), its columns come back as written (text as
    text, numbers as the digits in the file); otherwise the model's input columns. Each prediction column is
    named `predicted_<target>`, with more underscores if the input already has that name.
    """

    def on_predict_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._outputs: list[torch.Tensor] = []
        self._inputs: list[torch.Tensor] = []

    def on_predict_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        self._inputs.append(batch[0].cpu())
        self._outputs.append(outputs.cpu())

    def on_predict_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        y_hat = torch.cat(self._outputs).double()  # (N, out_features)
        columns = _input_columns(trainer, pl_module, torch.cat(self._inputs))
        names = prediction_columns(pl_module.schema["targets"], columns)
        for name, values in zip(names, y_hat.T, strict=True):
            columns[name] = [f"{v:.17g}" for v in values.tolist()]  # float64 repr: read back, the same number
        name = "predictions.csv" if trainer.world_size == 1 else f"predictions_rank{trainer.global_rank}.csv"
        path = Path(trainer.log_dir or trainer.default_root_dir) / name
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(columns)
            writer.writerows(zip(*columns.values(), strict=True))
        print(f"predictions written to {path}")


def _input_columns(trainer: L.Trainer, pl_module: L.LightningModule, x: torch.Tensor) -> dict[str, list[str]]:
    """The columns predictions.csv repeats: the predict file as written, else the model's raw inputs."""
    table = getattr(trainer.datamodule, "predict_table", None)
    if table is not None:
        loader = trainer.predict_dataloaders
        rows = getattr(getattr(loader, "sampler", None), "indices", lambda: None)()
        if rows is not None:  # under DDP this rank predicted every world_size-th row
            table = table.take(rows.cpu().numpy())
        return {
            name: ["" if v is None else str(v) for v in table.column(name).to_pylist()] for name in table.column_names
        }
    digits = 17 if x.dtype == torch.float64 else 9  # each number read back as the same float64 or float32
    return {
        name: [f"{v:.{digits}g}" for v in column]
        for name, column in zip(pl_module.schema["features"], x.T.tolist(), strict=True)
    }
