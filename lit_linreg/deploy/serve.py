"""Serve a trained model over HTTP with LitServe: `python -m lit_linreg serve --config C --ckpt_path CKPT`.

    POST /predict  {"rows": [{"<feature>": value, ...}, ...]}
                -> {"predictions": [{"predicted_<target>": value, ...}, ...]}   one object per row, in order
    GET  /health   "ok" once the model is loaded

The model is the one `predict` would use (see trained.py), and a row is read as `predict` reads a row of a
file: numbers for numeric features, the raw text of a category for a categorical one, null for a missing value
(filled with the training mean under `--data.missing mean`, refused otherwise), a category training never saw
refused unless `--data.unknown_category zeros`. The predictions are the same float32 numbers, named as in
predictions.csv. A bad request gets a 4xx answer, `{"error": "<one line naming the row and column>"}`, and
spoils no other request: requests that arrive together are batched (LitServe's `max_batch_size`), and a bad
one is answered alone while the good ones of its batch are predicted.
"""

# No `from __future__ import annotations`: LitServe reads `decode_request`'s annotation, PredictRequest, as a
# class, to have FastAPI check the body.
import contextlib
import json
import logging
import math
import multiprocessing
import os
import signal
import socket
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from lightning.pytorch.cli import LightningArgumentParser
from lightning.pytorch.utilities.exceptions import SIGTERMException
from pydantic import BaseModel, ConfigDict

from lit_linreg.deploy.trained import TrainedModelCLI, dtype_of, prediction_names, run_command
from lit_linreg.errors import ConfigError

try:
    import litserve as ls
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import JSONResponse
except ImportError as err:  # the optional `serve` extra
    raise ConfigError("serve needs LitServe: pip install 'lit_linreg[serve]' (make install installs it)") from err

FLOAT32_MAX = float(np.finfo(np.float32).max)
BYTES_PER_VALUE = 128  # the request body allowed per value of --max_rows full rows: room for long category names


class PredictRequest(BaseModel):
    """The body of POST /predict: `{"rows": [{feature: value, ...}, ...]}` (checked row by row in `read_rows`)."""

    model_config = ConfigDict(extra="forbid")
    rows: list[Any]


@dataclass
class RequestError:
    """A request that cannot be answered: the HTTP status and the one line that says why."""

    status: int
    message: str

    def response(self) -> JSONResponse:
        return JSONResponse({"error": self.message}, status_code=self.status)


class BadRequest(Exception):
    """Raised by `read_rows`; carries the `RequestError` to answer with."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.error = RequestError(status, message)


def read_rows(
    rows: list[Any], schema: dict, unknown_category: str, max_rows: int, dtype: type = np.float32
) -> np.ndarray:
    """The model's raw inputs (N, features), as `dtype` (the model's), from a request's rows, as `predict` reads a
    file's.

    A categorical column becomes its code (the category's position in the schema, -1 for an unknown one with
    `unknown_category: zeros`); a missing numeric value becomes NaN when `schema["missing"]` is "mean".
    Raises BadRequest naming the row (`rows[i]`, from 0) and column of the first value it refuses.
    """
    if len(rows) > max_rows:
        raise BadRequest(f"rows: {len(rows)} rows, more than this server's --max_rows {max_rows}", status=413)
    features, categories = schema["features"], schema["categories"]
    fills = schema["missing"] == "mean"
    index = {name: {level: code for code, level in enumerate(levels)} for name, levels in categories.items()}
    x = np.empty((len(rows), len(features)), dtype=np.float64)
    for i, row in enumerate(rows):
        if not isinstance(row, dict):
            raise BadRequest(f"rows[{i}]: {_short(row)} is not an object of feature: value")
        for j, name in enumerate(features):
            if name not in row:
                raise BadRequest(f"rows[{i}]: no column {name!r} (the features are {', '.join(features)})")
            value, where = row[name], f"rows[{i}], column {name!r}"
            missing = value is None or (isinstance(value, float) and math.isnan(value))
            if missing and not (fills and name not in categories):
                raise BadRequest(f"{where}: missing ({_short(value)}); predictions need every feature")
            if name in categories:
                if not isinstance(value, str):
                    raise BadRequest(f"{where}: {_short(value)} is not text: give a category's name")
                code = index[name].get(value, -1)
                if code == -1 and unknown_category == "error":
                    raise BadRequest(
                        f"{where}: category {_short(value)} was not seen in training"
                        f" (the server's --data.unknown_category zeros maps it to the reference level)"
                    )
                x[i, j] = code
            elif missing:
                x[i, j] = math.nan
            elif isinstance(value, bool) or not isinstance(value, int | float):
                raise BadRequest(f"{where}: {_short(value)} is not a number")
            elif not math.isfinite(value):
                raise BadRequest(f"{where}: {value} is not a finite number")
            elif abs(value) > FLOAT32_MAX:
                raise BadRequest(f"{where}: {value:g} is too large for float32")
            else:
                x[i, j] = value
    return x.astype(dtype, copy=False)


def _short(value: Any) -> str:
    """A value as the request's JSON shows it, cut to 40 characters: an error line stays one short line."""
    text = json.dumps(value, ensure_ascii=False)
    return text if len(text) <= 40 else text[:37] + "..."


class RegressionAPI(ls.LitAPI):
    """LitServe's view of a trained model: decode a request's rows, predict a batch of requests, encode each.

    LitServe runs the model in a process of its own, started afresh (spawned), and a LightningModule does not
    pickle: the worker rebuilds it from the serve command's own arguments, with the checkpoint resolved.

    Args:
        args: The `serve` arguments (`--config C --ckpt_path CKPT ...`), `--ckpt_path` a file.
        unknown_category: "error" or "zeros", as `--data.unknown_category`.
        max_rows: Rows one request may hold.
        max_batch_size: Requests predicted together (1: each alone).
        batch_timeout: Seconds to wait for a batch to fill; 0 takes the requests waiting, never waits.
    """

    def __init__(
        self, args: list[str], unknown_category: str, max_rows: int, max_batch_size: int, batch_timeout: float
    ) -> None:
        super().__init__(max_batch_size=max_batch_size, batch_timeout=batch_timeout)
        self.args, self.unknown_category, self.max_rows = list(args), unknown_category, max_rows

    def setup(self, device: str) -> None:
        if multiprocessing.parent_process() is not None:
            _end_quietly_on_signals()
        loggers = [
            logging.getLogger(name)
            for name in ("lightning.pytorch.utilities.rank_zero", "lightning.fabric.utilities.seed")
        ]
        levels = [logger.level for logger in loggers]
        for logger in loggers:
            logger.setLevel(logging.WARNING)  # the parent process said it all once
        try:
            self.model = run_command(_RebuildCLI, self.args).model.to(device)
        finally:
            for logger, level in zip(loggers, levels, strict=True):
                logger.setLevel(level)
        self.schema, self.names = self.model.schema, prediction_names(self.model.schema)
        self.dtype = torch.empty(0, dtype=dtype_of(self.model)).numpy().dtype  # float64 if it trained so

    def decode_request(self, request: PredictRequest) -> np.ndarray | RequestError:
        # A bad request's error is returned, not raised: raised, it would fail every request of its batch.
        try:
            return read_rows(request.rows, self.schema, self.unknown_category, self.max_rows, self.dtype)
        except BadRequest as err:
            return err.error

    def batch(self, inputs: list) -> list:
        return list(inputs)  # requests hold different numbers of rows: `predict` joins and splits them

    def predict(self, inputs: Any) -> Any:
        """Predict every good request's rows in one forward pass; an error passes through in its place."""
        if self.max_batch_size == 1:  # LitServe hands one request, unbatched
            return self._predict([inputs])[0]
        return self._predict(inputs)

    def _predict(self, inputs: list) -> list:
        good = [x for x in inputs if isinstance(x, np.ndarray)]
        if not good:
            return inputs
        x = torch.from_numpy(np.concatenate(good)).to(self.device)  # (rows of every good request, features)
        with torch.inference_mode():
            y = self.model(x).cpu().numpy()  # (rows, targets)
        splits = iter(np.split(y, np.cumsum([len(x) for x in good])[:-1]))
        return [next(splits) if isinstance(x, np.ndarray) else x for x in inputs]

    def encode_response(self, output: np.ndarray | RequestError) -> Any:
        if isinstance(output, RequestError):
            return output.response()
        return {"predictions": [dict(zip(self.names, row, strict=True)) for row in output.tolist()]}


async def _invalid_body(request: Any, err: RequestValidationError) -> JSONResponse:
    """A body that is not JSON, or not `{"rows": [...]}`: 400 and one line, as the row errors are."""
    first = err.errors()[0]
    where = ".".join(str(part) for part in first.get("loc", ()) if part != "body")
    if first.get("type") == "json_invalid":
        reason = first.get("ctx", {}).get("error", "")
        message = f"the body is not JSON ({reason})" if reason else "the body is not JSON"
    elif first.get("type") == "missing":
        message = f'the body has no "{where}": send {{"rows": [{{"<feature>": value, ...}}, ...]}}'
    elif not where:  # a JSON list or number; or form data, as `curl -d` sends without a Content-Type header
        message = 'the body is not a JSON object {"rows": [...]} (sent with Content-Type: application/json)'
    else:
        message = f"the body's {where}: {first.get('msg', 'not valid')}"
    return JSONResponse({"error": message}, status_code=400)


class ServeCLI(TrainedModelCLI):
    """`serve`: the trained model behind LitServe's HTTP server."""

    command = "serve"

    def parse_arguments(self, parser: LightningArgumentParser, args: Any) -> None:
        self.args = list(args)[1:]  # less `predict`: what the inference worker rebuilds the model from
        super().parse_arguments(parser, args)

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        super().add_arguments_to_parser(parser)
        parser.add_argument("--host", type=str, default="127.0.0.1", help="127.0.0.1 (this machine), 0.0.0.0 or ::")
        parser.add_argument("--port", type=int, default=8000, help="TCP port, 1024 to 65535")
        parser.add_argument("--max_batch_size", type=int, default=64, help="requests predicted together")
        parser.add_argument("--batch_timeout", type=float, default=0.0, help="seconds to wait for a batch to fill")
        parser.add_argument("--max_rows", type=int, default=10_000, help="rows one request may hold")

    def use(self, model: torch.nn.Module, datamodule: Any) -> None:
        host, port = self.option("host"), self.option("port")
        max_rows, max_batch_size = self.option("max_rows"), self.option("max_batch_size")
        batch_timeout = self.option("batch_timeout")
        if host not in ("127.0.0.1", "0.0.0.0", "::"):
            raise ConfigError(f"--host must be 127.0.0.1, 0.0.0.0 or :: (LitServe's choices), got {host!r}")
        if not 1024 <= port <= 65535:
            raise ConfigError(f"--port must be from 1024 to 65535, got {port}")
        for name, value in (("max_rows", max_rows), ("max_batch_size", max_batch_size)):
            if value < 1:
                raise ConfigError(f"--{name} must be at least 1, got {value}")
        if not batch_timeout >= 0:
            raise ConfigError(f"--batch_timeout must be >= 0 seconds, got {batch_timeout}")
        _check_port_free(host, port)
        unknown_category = getattr(datamodule, "unknown_category", "error")
        ckpt_path = self.config[self.subcommand]["ckpt_path"]  # resolved: `last` or `best` named a file
        args = [*self.args, "--ckpt_path", ckpt_path]
        api = RegressionAPI(args, unknown_category, max_rows, max_batch_size, batch_timeout)
        body_limit = max_rows * (len(model.schema["features"]) + 1) * BYTES_PER_VALUE + (1 << 20)  # bytes
        server = ls.LitServer(api, accelerator="cpu", max_payload_size=body_limit)
        server.app.add_exception_handler(RequestValidationError, _invalid_body)
        print(f"serving {ckpt_path} on http://{host}:{port}/predict (GET /health: ok once loaded)", file=sys.stderr)
        with _stop_gracefully() as stopped_by:
            server.run(host=host, port=port, generate_client_file=False, log_level="warning", access_log=False)
        if stopped_by == [signal.SIGTERM]:
            raise SIGTERMException  # exit 143, as any run a signal stopped
        if stopped_by:
            raise KeyboardInterrupt  # exit 130


@contextlib.contextmanager
def _stop_gracefully() -> Iterator[list[int]]:
    """Let SIGTERM, as Ctrl-C, run LitServe's shutdown, which ends its workers; yields the signal that came.

    Left to its default, SIGTERM (what a scheduler or `docker stop` sends) ended this process at once and left
    the inference and HTTP workers serving the port as orphans.
    """
    stopped_by: list[int] = []
    server_pid = os.getpid()

    def stop(signum: int, frame: object) -> None:
        if os.getpid() != server_pid:
            # A process LitServe forked, inheriting this handler: its queue manager, or an HTTP worker once
            # uvicorn has shut it down. The server's shutdown ends them in order; a manager killed first (by a
            # SIGTERM to the whole group, as systemd sends it) would fail the inference worker mid-read.
            return
        if not stopped_by:
            stopped_by.append(signum)
            raise KeyboardInterrupt  # LitServe's run catches it and shuts its workers down

    previous = {signum: signal.signal(signum, stop) for signum in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield stopped_by
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def _check_port_free(host: str, port: int) -> None:
    """Refuse a port another program holds, in one line (uvicorn would log it and exit)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn binds: a closed port is free
        try:
            probe.bind((host, port))
        except OSError as err:
            raise ConfigError(f"--port {port}: cannot listen on {host}:{port} ({err.strerror}): give another") from None


class _RebuildCLI(ServeCLI):
    """The inference worker's: the same arguments build the same model, kept as `self.model`, not served."""

    def use(self, model: torch.nn.Module, datamodule: Any) -> None:
        self.model = model


def run(args: list[str]) -> None:
    """`python -m lit_linreg serve ARGS`: serve until stopped (Ctrl-C)."""
    run_command(ServeCLI, args)


def _end_quietly_on_signals() -> None:
    """In the inference worker: leave Ctrl-C to the server, and end at once, without a traceback, on SIGTERM.

    Ctrl-C reaches every process of the terminal's group: the server's shutdown then ends this worker, by
    SIGTERM, and a worker gone before it would read as a crash. Exiting on SIGTERM at once spares the traceback
    of the request queue torn down under a worker still waiting on it.
    """
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, lambda signum, frame: os._exit(0))
