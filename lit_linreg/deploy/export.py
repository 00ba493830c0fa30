"""Export a trained model to ONNX: `python -m lit_linreg export --config C --ckpt_path CKPT --output model.onnx`.

The graph is the model's own forward pass from the design matrix on: it takes `features`, (N, columns) float32
in original units, and returns `predictions`, (N, targets) float32 in original units (both float64 for a model
that trained in float64, a table beyond float32's precision: `model.json` says which); the standardization is
inside. A categorical feature arrives as its one-hot design columns (`origin=Japan`, `origin=USA`: 1 for the
row's category, 0 otherwise; all 0 for the reference level), so a runtime without Python needs no category
table; under `--data.missing mean` a NaN in a numeric column is filled with its training mean inside the
graph. `model.json`, beside the file, names the input, the output and the columns in order.

Both files are written whole or not at all (`atomic_write`): an export that fails leaves earlier ones as
they were.
"""

from __future__ import annotations

import contextlib
import copy
import importlib.util
import io
import json
import warnings
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch.cli import LightningArgumentParser
from torch import nn

from lit_linreg.cli.checkpoint import atomic_write
from lit_linreg.deploy.trained import TrainedModelCLI, dtype_of, prediction_names, run_command
from lit_linreg.errors import ConfigError
from lit_linreg.tables.encoding import design_names

INPUT, OUTPUT = "features", "predictions"
OPSET = 17  # onnxruntime 1.16 and later run it


class DesignInput(nn.Module):
    """Stands in for the model's TableEncoder in the exported copy: the input is already the design matrix.

    What the encoder does beyond the one-hot columns is kept: a NaN in a numeric column becomes the column's
    training mean (`missing: mean`).

    Args:
        schema: The model's schema (see encoding.py).
        fill: The encoder's per-feature fills, (features,).
    """

    def __init__(self, schema: dict, fill: torch.Tensor) -> None:
        super().__init__()
        numeric = [name for name in schema["features"] if name not in schema["categories"]]
        columns = design_names(schema)
        design_fill = torch.zeros(len(columns), dtype=fill.dtype)  # (design columns,); one-hot never NaN-filled
        for name, value in zip(schema["features"], fill.tolist(), strict=True):
            if name in numeric:
                design_fill[columns.index(name)] = value
        self.fill_missing = schema["missing"] == "mean"
        self.register_buffer("fill", design_fill)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.where(torch.isnan(x), self.fill, x) if self.fill_missing else x


def exportable(model: nn.Module) -> nn.Module:
    """A copy of `model` whose forward takes the design matrix (N, design columns) instead of codes."""
    model = copy.deepcopy(model).cpu().eval()
    if model.design.encoder is not None:
        model.design.encoder = DesignInput(model.schema, model.design.encoder.fill).to(dtype_of(model))
    return model


def to_onnx(model: nn.Module) -> bytes:
    """The ONNX bytes of `exportable(model)`, rows a dynamic axis; ConfigError naming why a network cannot be."""
    graph = exportable(model)
    width = len(design_names(model.schema))
    buffer = io.BytesIO()
    try:
        # The TorchScript-based exporter: deprecated, but offline and fast, and it exports every op used here. On a
        # failure it prints the whole traced graph: the reason alone is what a user needs.
        quiet = io.StringIO()
        with warnings.catch_warnings(), contextlib.redirect_stdout(quiet), contextlib.redirect_stderr(quiet):
            warnings.simplefilter("ignore")
            torch.onnx.export(
                graph,
                (torch.zeros(2, width, dtype=dtype_of(model)),),
                buffer,
                input_names=[INPUT],
                output_names=[OUTPUT],
                dynamic_axes={INPUT: {0: "rows"}, OUTPUT: {0: "rows"}},
                opset_version=OPSET,
                dynamo=False,
            )
    except Exception as err:  # the exporter raises many types, each a reason this network cannot go
        net = type(getattr(model, "net", model)).__name__
        raise ConfigError(f"the network {net} cannot be exported to ONNX: {_first_sentence(err)}") from None
    return buffer.getvalue()


def _first_sentence(err: BaseException) -> str:
    text = " ".join(str(err).split()) or type(err).__name__
    return text.split(". ")[0].rstrip(".")


def description(model: nn.Module, onnx_file: str) -> dict[str, Any]:
    """What `model.json` says: the file, the input's and output's names and their columns, in order."""
    schema, categories = model.schema, model.schema["categories"]
    return {
        "onnx": onnx_file,
        "input": INPUT,
        "input_columns": design_names(schema),
        "output": OUTPUT,
        "output_columns": prediction_names(schema),
        "targets": list(schema["targets"]),
        "dtype": str(dtype_of(model)).removeprefix("torch."),
        "categories": {name: {"levels": levels, "reference": levels[0]} for name, levels in categories.items()},
        "missing": "NaN in a numeric column: its training mean" if schema["missing"] == "mean" else "not filled",
    }


class ExportCLI(TrainedModelCLI):
    """`export`: the trained model as an ONNX file, and its description beside it."""

    command = "export"

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        super().add_arguments_to_parser(parser)
        parser.add_argument("--output", type=str, default="model.onnx", help="the ONNX file to write")

    def use(self, model: nn.Module, datamodule: Any) -> None:
        output = Path(self.option("output"))
        if output.suffix != ".onnx":
            raise ConfigError(f"--output must name a .onnx file, got {output}")
        if output.is_dir():
            raise ConfigError(f"--output {output} is a directory: name a .onnx file")
        data = to_onnx(model)  # before anything is written: a refusal leaves earlier files as they were
        sidecar = output.with_suffix(".json")
        atomic_write(output, data)
        atomic_write(sidecar, (json.dumps(description(model, output.name), indent=2) + "\n").encode())
        print(f"wrote {output} and {sidecar}")


def run(args: list[str]) -> None:
    """`python -m lit_linreg export ARGS`."""
    if importlib.util.find_spec("onnx") is None:  # torch's exporter writes through it
        raise ConfigError("export needs the onnx package: pip install 'lit_linreg[serve]' (make install installs it)")
    run_command(ExportCLI, args)
