"""predictions.csv: the rows predicted for, then one column per target, written a batch at a time."""

from __future__ import annotations

import csv
import io
import os
from pathlib import Path
from typing import Any, BinaryIO

import lightning as L
import torch

from lit_linreg.tables.columns import prediction_columns


class PredictionWriter(L.Callback):
    """Writes `predictions.csv` in the run directory: the rows predicted for, then one column per target.

    Each batch's rows are written as soon as they are predicted, so a predict run holds one batch, whatever the
    file's size. They go to `predictions.csv.partial`, renamed `predictions.csv` once every row is written: a run
    that fails leaves no half file under the real name (nor replaces an earlier one).

    When the rows come from a predict file (`data.predict_path`: batches `(x, rows as written)`, see
    data/predict_rows.py), its columns come back as written (text as text, numbers as the digits in the file);
    otherwise the model's input columns. Each prediction column is named `predicted_<target>`, with more
    underscores if the input already has that name.
    """

    def on_predict_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        name = "predictions.csv" if trainer.world_size == 1 else f"predictions_rank{trainer.global_rank}.csv"
        self.path = Path(trainer.log_dir or trainer.default_root_dir) / name
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._partial = self.path.with_name(f"{name}.partial")
        self._file: BinaryIO | None = open(self._partial, "wb")  # noqa: SIM115  closed at the end or on failure
        self._names: list[str] | None = None  # the columns, from the first batch

    def on_predict_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        y_hat = outputs.detach().double().cpu()  # (B, out_features)
        written = batch[1] if len(batch) > 1 and not isinstance(batch[1], torch.Tensor) else None
        if written is not None:
            self._write_arrow(pl_module.schema["targets"], written, y_hat)
        else:
            self._write_numbers(pl_module.schema, batch[0].cpu(), y_hat)

    def on_predict_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._names is None:  # no rows: the header alone
            self._write_numbers(pl_module.schema, torch.empty(0, len(pl_module.schema["features"])), torch.empty(0, 0))
        self._file.close()
        os.replace(self._partial, self.path)
        print(f"predictions written to {self.path}")

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        file = getattr(self, "_file", None)
        if file is not None and not file.closed:
            file.close()
            self._partial.unlink(missing_ok=True)

    def _write_arrow(self, targets: list[str], written: Any, y_hat: torch.Tensor) -> None:
        """The rows as written (a pyarrow Table), then the predictions: pyarrow's CSV writer, in C++, prints each
        float64 as the shortest digits that read back as the same number."""
        import pyarrow as pa  # noqa: PLC0415  the table path has it loaded already
        import pyarrow.csv as pcsv  # noqa: PLC0415

        if self._names is None:
            self._names = prediction_columns(targets, written.column_names)
        for name, values in zip(self._names, y_hat.T.numpy(), strict=True):
            written = written.append_column(name, pa.array(values))
        written = _printable(written)
        header = self._file.tell() == 0
        if _needs_quotes(written):  # pyarrow would quote every text cell: Python's csv quotes those that need it
            cells = [["" if v is None else str(v) for v in column.to_pylist()] for column in written.columns]
            rows = list(zip(*cells, strict=True))
            self._write_text([written.column_names, *rows] if header else rows)
            return
        pcsv.write_csv(written, self._file, pcsv.WriteOptions(include_header=header, quoting_style="none"))

    def _write_numbers(self, schema: dict, x: torch.Tensor, y_hat: torch.Tensor) -> None:
        """The model's input columns, each number read back as the same float32 (or float64), then the predictions."""
        digits = 17 if x.dtype == torch.float64 else 9
        if self._names is None:
            self._names = prediction_columns(schema["targets"], schema["features"])
            self._write_text([[*schema["features"], *self._names]])
        inputs = [[f"{v:.{digits}g}" for v in row] for row in x.tolist()]
        predicted = [[f"{v:.17g}" for v in row] for row in y_hat.tolist()]  # float64 repr: read back, the same number
        self._write_text([a + b for a, b in zip(inputs, predicted, strict=True)])

    def _write_text(self, rows: list) -> None:
        text = io.StringIO(newline="")
        csv.writer(text).writerows(rows)
        self._file.write(text.getvalue().encode())


def _printable(table: Any) -> Any:
    """The table with every column pyarrow cannot print as CSV, or would print unquoted whatever it holds (lists,
    structs, maps, bytes), as its text, as Python prints each value."""
    import pyarrow as pa  # noqa: PLC0415

    for i, field in enumerate(table.schema):
        if pa.types.is_nested(field.type) or pa.types.is_dictionary(field.type) or pa.types.is_binary(field.type):
            text = ["" if v is None else str(v) for v in table.column(i).to_pylist()]
            table = table.set_column(i, field.name, pa.array(text, pa.string()))
    return table


def _needs_quotes(table: Any) -> bool:
    """Whether a text cell (or a column's name) holds a comma, a quote or a line break: CSV must quote it."""
    import pyarrow as pa  # noqa: PLC0415
    import pyarrow.compute as pc  # noqa: PLC0415

    special = r'[",\r\n]'
    if any(c in name for name in table.column_names for c in ',"\r\n'):
        return True
    return any(
        pc.any(pc.match_substring_regex(column, special)).as_py()
        for column, field in zip(table.columns, table.schema, strict=True)
        if pa.types.is_string(field.type) or pa.types.is_large_string(field.type)
    )
