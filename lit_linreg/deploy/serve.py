"""The HTTP server of `python -m lit_linreg serve --config C --ckpt_path CKPT`, built on LitServe.

    POST /predict  {"rows": [{"<feature>": value, ...}, ...]}
                -> {"predictions": [{"predicted_<target>": value, ...}, ...]}   one object per row, in order
    GET  /health   "ok" once the model is loaded

The command resolves the config and the checkpoint with the whole CLI (serve_cli.py), then replaces its own
process with this lean one (`python -m lit_linreg.deploy SERVABLE`): the server and its workers import LitServe
and numpy, never Lightning (see servable.py). A row is read as `predict` reads a row of a file: numbers for numeric
features, the raw text of a category for a categorical one, null for a missing value (filled with the training
mean under `--data.missing mean`, refused otherwise), a category training never saw refused unless
`--data.unknown_category zeros`.

Every request that cannot be answered gets a 4xx and one line of JSON, `{"error": "..."}`, whether the rows are
wrong, the body is no JSON at all, too large, too deeply nested, or sent to a wrong path or with a wrong method;
and it spoils no other request: requests that arrive together are batched (LitServe's `max_batch_size`), and a bad
one is answered alone while the good ones of its batch are predicted.
"""

# No `from __future__ import annotations`: LitServe reads `decode_request`'s annotation, PredictRequest, as a
# class, to have FastAPI check the body.
import json
import math
import multiprocessing
import os
import pickle
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import litserve as ls
import numpy as np
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, field_validator
from starlette.exceptions import HTTPException

from lit_linreg.deploy.servable import Servable
from lit_linreg.deploy.stopping import end_quietly_on_signals, stop_gracefully, stopped
from lit_linreg.deploy.waiting_loop import WaitingBatchedLoop

try:  # built on LitServe's private API (see answers.py): a release without it serves through its own queues
    from lit_linreg.deploy.answers import AnswersOverZMQ
except ImportError as err:
    AnswersOverZMQ, WITHOUT_ANSWERS = None, str(err)

BYTES_PER_VALUE = 128  # the request body allowed per value of --max_rows full rows: room for long category names
ROUTES = "POST /predict, GET /health"
MAX_DEPTH = 32  # lists and objects within a row: a good row has none


class PredictRequest(BaseModel):
    """The body of POST /predict: `{"rows": [{feature: value, ...}, ...]}` (checked row by row in `read_rows`)."""

    model_config = ConfigDict(extra="forbid")
    rows: list[Any]

    @field_validator("rows")
    @classmethod
    def _shallow(cls, rows: list[Any]) -> list[Any]:
        # Checked here, in the HTTP process: a row nested hundreds deep is valid JSON, but cannot be pickled on to
        # the inference worker (Python's recursion limit), which would answer 500.
        for i, row in enumerate(rows):
            if _deeper_than(row, MAX_DEPTH):
                raise ValueError(f"rows[{i}]: nested more than {MAX_DEPTH} deep; a row is an object of feature: value")
        return rows


def _deeper_than(value: Any, limit: int) -> bool:
    """Whether JSON `value` nests lists or objects more than `limit` deep; without recursion, whatever its depth."""
    stack = [(value, 1)]
    while stack:
        value, depth = stack.pop()
        if isinstance(value, dict | list):
            if depth > limit:
                return True
            stack.extend((item, depth + 1) for item in (value.values() if isinstance(value, dict) else value))
    return False


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
    rows: list[Any], schema: dict, unknown_category: str, max_rows: int, dtype: str = "float32"
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
    fills, largest = schema["missing"] == "mean", float(np.finfo(dtype).max)
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
            elif isinstance(value, float) and not math.isfinite(value):
                raise BadRequest(f"{where}: {value} is not a finite number")
            elif abs(value) > largest:  # compared as it is: an integer past 1.8e308 has no float at all
                raise BadRequest(f"{where}: {_short(value)} is too large for {dtype}")
            else:
                x[i, j] = value
    return x.astype(dtype, copy=False)


def _short(value: Any) -> str:
    """A value as the request's JSON shows it, cut to 40 characters: an error line stays one short line."""
    if isinstance(value, int) and not isinstance(value, bool) and abs(value) > 10**40:
        return f"an integer of {len(str(abs(value)))} digits"
    text = json.dumps(value, ensure_ascii=False)
    return text if len(text) <= 40 else text[:37] + "..."


class RegressionAPI(ls.LitAPI):
    """LitServe's view of a trained model: decode a request's rows, predict a batch of requests, encode each.

    LitServe pickles this object into each inference worker, a process of its own, started afresh (spawned): it
    carries the `Servable`, a few arrays for a linear model, and `setup` readies its predictor there. Batches are
    fetched by `WaitingBatchedLoop`, which waits for requests rather than polling (waiting_loop.py).

    Args:
        servable: The model and the server's settings (see servable.py); or the file it will be handed over in,
            once resolved, which `setup` waits for.
        max_batch_size: Requests predicted together (1: each alone).
        batch_timeout: Seconds to wait for a batch to fill; 0 takes the requests waiting, never waits.
    """

    def __init__(self, servable: Servable | Path, max_batch_size: int = 64, batch_timeout: float = 0.0) -> None:
        loop = WaitingBatchedLoop() if max_batch_size > 1 else "auto"  # 1: LitServe's single loop, which waits
        super().__init__(max_batch_size=max_batch_size, batch_timeout=batch_timeout, loop=loop)
        self.servable, self.handed_over = (None, servable) if isinstance(servable, Path) else (servable, None)

    def setup(self, device: str) -> None:
        if multiprocessing.parent_process() is not None:
            end_quietly_on_signals()
        if self.servable is None:  # still being resolved (launch.py)
            self.servable = _await_servable(self.handed_over)
        self.predictor = self.servable.predictor.ready()
        self.max_rows = self.servable.options.get("max_rows", 10_000)

    def decode_request(self, request: PredictRequest) -> np.ndarray | RequestError:
        # A bad request's error is returned, not raised: raised, it would fail every request of its batch.
        servable = self.servable
        try:
            return read_rows(
                request.rows, servable.schema, servable.unknown_category, self.max_rows, self.predictor.dtype
            )
        except BadRequest as err:
            return err.error

    def batch(self, inputs: list) -> list:
        return list(inputs)  # requests hold different numbers of rows: `predict` joins and splits them

    def predict(self, inputs: Any) -> Any:
        """Predict every good request's rows at once; an error passes through in its place."""
        if self.max_batch_size == 1:  # LitServe hands one request, unbatched
            return self._predict([inputs])[0]
        return self._predict(inputs)

    def _predict(self, inputs: list) -> list:
        good = [x for x in inputs if isinstance(x, np.ndarray)]
        if not good:
            return inputs
        y = self.predictor(np.concatenate(good))  # (rows of every good request, targets)
        splits = iter(np.split(y, np.cumsum([len(x) for x in good])[:-1]))
        return [_finite(next(splits)) if isinstance(x, np.ndarray) else x for x in inputs]

    def encode_response(self, output: np.ndarray | RequestError) -> Any:
        if isinstance(output, RequestError):
            return output.response()
        return {"predictions": [dict(zip(self.servable.names, row, strict=True)) for row in output.tolist()]}


def _await_servable(path: Path) -> Servable:
    """The Servable handed over in `path` once it appears (written whole, by a rename); exits if the server is gone."""
    parent = multiprocessing.parent_process()
    while not path.exists():
        if parent is not None and not parent.is_alive():
            os._exit(1)
        time.sleep(0.01)
    return pickle.loads(path.read_bytes())


def _finite(y: np.ndarray) -> np.ndarray | RequestError:
    """A request's predictions (rows, targets), or its error where one is beyond the model's dtype (JSON has no
    infinity): inputs far outside what training saw."""
    bad = np.flatnonzero(~np.isfinite(y).all(axis=1))
    if len(bad) == 0:
        return y
    return RequestError(
        400,
        f"rows[{bad[0]}]: the prediction is beyond {y.dtype} ({y[bad[0]].max()}): inputs far"
        " outside the training data's range",
    )


# --- every error the HTTP process answers itself, as one line --------------------------------------------------
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
    elif first.get("type") == "value_error":  # PredictRequest's own check
        message = str(first.get("ctx", {}).get("error", first.get("msg", "not valid")))
    else:
        message = f"the body's {where}: {first.get('msg', 'not valid')}"
    return JSONResponse({"error": _one_line(message)}, status_code=400)


async def _http_error(request: Any, err: HTTPException) -> JSONResponse:
    """Starlette's and FastAPI's own refusals (a wrong path or method, a body that cannot be parsed or is too
    large), as one line of JSON rather than `{"detail": ...}`."""
    where = f"{request.method} {request.url.path}"
    if err.status_code == 404:
        message = f"{where}: no such path (this server answers {ROUTES})"
    elif err.status_code == 405:
        message = f"{where}: method not allowed (this server answers {ROUTES})"
    elif err.status_code == 413:
        message = f"the body is larger than this server's limit ({err.detail})"
    elif err.status_code == 400 and err.__cause__ is not None:
        message = f"the body is not JSON ({_parse_failure(err.__cause__)})"
    else:
        message = str(err.detail)
    return JSONResponse({"error": _one_line(message)}, status_code=err.status_code, headers=err.headers)


def _parse_failure(cause: BaseException) -> str:
    """Why Python's json could not read a body, in a few words."""
    if isinstance(cause, UnicodeDecodeError):
        return f"not UTF-8: {cause.reason} at byte {cause.start}"
    if isinstance(cause, RecursionError):
        return "nested too deeply"
    return str(cause).split(";")[0] or type(cause).__name__  # e.g. an integer of more than 4300 digits


async def _server_error(request: Any, err: Exception) -> JSONResponse:
    """A fault of the server's own (a bug): 500, still one line; the traceback goes to the server's log."""
    return JSONResponse({"error": "internal server error: see the server's log"}, status_code=500)


def _one_line(text: str) -> str:
    return " ".join(text.split())


class BodyLimit:
    """Refuses a body over `max_bytes` with 413, from its Content-Length before reading it, or as it streams in.

    Args:
        app: The ASGI app it guards.
        max_bytes: The largest body allowed; or a function giving it, asked at the first request (the model's
            features, which it depends on, may be known only once the server runs).
    """

    def __init__(self, app: Any, max_bytes: int | Callable[[], int]) -> None:
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        if callable(self.max_bytes):
            self.max_bytes = self.max_bytes()
        declared = dict(scope["headers"]).get(b"content-length", b"0")
        if declared.isdigit() and int(declared) > self.max_bytes:
            response = JSONResponse(self._error(f"{int(declared)} bytes"), status_code=413)
            return await response(scope, receive, send)
        total = 0

        async def counted() -> dict:
            nonlocal total
            message = await receive()
            total += len(message.get("body", b""))
            if total > self.max_bytes:
                raise HTTPException(413, f"over {self.max_bytes} bytes")
            return message

        await self.app(scope, counted, send)

    def _error(self, size: str) -> dict:
        return {"error": f"the body is larger than this server's limit ({size}, over {self.max_bytes} bytes)"}


def body_limit(features: int, max_rows: int) -> int:
    """The largest body a server takes, in bytes: `max_rows` rows of `features` values, and 1 MiB to spare."""
    return max_rows * (features + 1) * BYTES_PER_VALUE + (1 << 20)


def server(api: RegressionAPI, options: dict[str, Any]) -> ls.LitServer:
    """The LitServer of an API: its workers, and every error answered as one line; `options` as a Servable's."""
    max_rows = options.get("max_rows", 10_000)

    def limit() -> int:  # the model's features, known by the first request (see launch.py)
        return body_limit(len(api.servable.schema["features"]), max_rows)

    workers, middlewares = options.get("workers", 1), [(BodyLimit, {"max_bytes": limit})]
    lit_server = _server_class()(api, accelerator="cpu", workers_per_device=workers, middlewares=middlewares)
    lit_server.app.add_exception_handler(RequestValidationError, _invalid_body)
    lit_server.app.add_exception_handler(HTTPException, _http_error)
    lit_server.app.add_exception_handler(Exception, _server_error)
    return lit_server


def _server_class() -> type[ls.LitServer]:
    """`AnswersOverZMQ` (answers.py), or LitServe's own where ZeroMQ's IPC is missing (Windows) or that module's
    LitServe hooks are (another LitServe release: one line says so, and the server runs, slower)."""
    if sys.platform == "win32":
        return ls.LitServer
    if AnswersOverZMQ is None:
        print(f"lit-linreg: warning: {WITHOUT_ANSWERS}; answers go through LitServe's own queues", file=sys.stderr)
        return ls.LitServer
    return AnswersOverZMQ


def main(argv: list[str] | None = None) -> int:
    """`python -m lit_linreg.deploy SERVABLE`: serve the Servable that `serve` wrote, until stopped.

    Returns the exit code: 130 after Ctrl-C, 143 after SIGTERM, as for any run a signal stopped.
    """
    (path,) = sys.argv[1:] if argv is None else argv
    servable = Servable.load(Path(path))
    options = servable.options
    api = RegressionAPI(servable, options.get("max_batch_size", 64), options.get("batch_timeout", 0.0))
    with stop_gracefully() as stopped_by:
        lit_server = server(api, options)
        print(serving_line(servable), file=sys.stderr, flush=True)
        run(lit_server, options)
    return stopped(stopped_by)


def serving_line(servable: Servable) -> str:
    options = servable.options
    where = f"{options.get('host', '127.0.0.1')}:{options.get('port', 8000)}"
    return f"serving {servable.checkpoint} on http://{where}/predict ({ROUTES})"


def run(lit_server: ls.LitServer, options: dict[str, Any]) -> None:
    """Serve until LitServe's shutdown, which a signal starts (see `stop_gracefully`)."""
    host, port = options.get("host", "127.0.0.1"), options.get("port", 8000)
    lit_server.run(host=host, port=port, generate_client_file=False, log_level="warning", access_log=False)
