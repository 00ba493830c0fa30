"""`serve`: rows read as `predict` reads them, the same predictions, every bad request answered in one line, and a
server whose processes hold neither torch nor Lightning."""

from __future__ import annotations

import asyncio
import contextlib
import csv
import http.client
import json
import math
import os
import pickle
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import torch

from lit_linreg.cli.main import main
from tests.conftest import QUIET, ROOT, config, latest_version

pytest.importorskip("litserve")  # the `serve` extra
from lit_linreg.deploy import launch, serve, serve_cli  # noqa: E402
from lit_linreg.deploy.servable import LinearPredictor, ModulePredictor, Servable  # noqa: E402

SCHEMA = {
    "features": ["area", "hood"],
    "targets": ["price"],
    "categories": {"hood": ["Central", "North", "South"]},
    "missing": "drop",
}
ROWS = [  # the test table's rows as JSON, and (below) as a predict file
    {"id": "A", "neighbourhood": "Central", "area_m2": 72.5, "rooms": 3, "age_years": 10, "distance_km": 2.5},
    {"id": "B", "neighbourhood": "North", "area_m2": 150, "rooms": 5, "age_years": None, "distance_km": 12},
    {"id": "C", "neighbourhood": "Riverside, east bank", "area_m2": 95, "rooms": 4, "age_years": 40, "distance_km": 7},
]
NORTH = {"hood": "North"}
TRAIN = ["--data.categorical", "[neighbourhood]", "--data.missing", "mean", "--trainer.max_epochs", "30"]
TRAIN += ["--figure.enabled", "false"]  # matplotlib's drawing: a third of a short fit's time
RTOL = 1e-5  # serve computes in float64 from the coefficients, predict in the model's float32 layers


def test_rows_become_codes_and_a_missing_number_nan_under_missing_mean():
    schema = {**SCHEMA, "missing": "mean"}
    rows = [{"area": 50, "hood": "South", "other": "ignored"}, {"area": None, "hood": "Central"}]
    x = serve.read_rows(rows, schema, "error", max_rows=10)
    assert x.dtype == np.float32
    assert x[0].tolist() == [50.0, 2.0]
    assert math.isnan(x[1, 0]) and x[1, 1] == 0.0


def test_a_model_that_trained_in_float64_reads_its_requests_rows_in_float64():
    x = serve.read_rows([{"area": 1 + 2**-40, "hood": "North"}], SCHEMA, "error", max_rows=10, dtype="float64")
    assert x.dtype == np.float64 and x[0, 0] == 1 + 2**-40  # float32 would round it to 1


def test_an_unknown_category_is_the_reference_level_with_unknown_category_zeros():
    x = serve.read_rows([{"area": 1.5, "hood": "East"}], SCHEMA, "zeros", max_rows=10)
    assert x.tolist() == [[1.5, -1.0]]  # the encoder's code for "no level": all one-hot columns 0


@pytest.mark.parametrize(
    ("rows", "status", "message"),
    [
        ([{"hood": "North"}], 400, "rows[0]: no column 'area' (the features are area, hood)"),
        (
            [{"area": 1, "hood": "North"}, {"area": "big", "hood": "North"}],
            400,
            "rows[1], column 'area': \"big\" is not a number",
        ),
        ([{"area": True, "hood": "North"}], 400, "rows[0], column 'area': true is not a number"),
        ([{"area": 1, "hood": "East"}], 400, "rows[0], column 'hood': category \"East\" was not seen in training"),
        ([{"area": 1, "hood": 3}], 400, "rows[0], column 'hood': 3 is not text: give a category's name"),
        (
            [{"area": None, "hood": "North"}],
            400,
            "rows[0], column 'area': missing (null); predictions need every feature",
        ),
        ([{"area": math.inf, "hood": "North"}], 400, "rows[0], column 'area': inf is not a finite number"),
        ([{"area": 1e39, "hood": "North"}], 400, "rows[0], column 'area': 1e+39 is too large for float32"),
        ([{"area": 10**400, "hood": "North"}], 400, "rows[0], column 'area': an integer of 401 digits is too large"),
        ([[1, "North"]], 400, 'rows[0]: [1, "North"] is not an object of feature: value'),
        ([{"area": 1, "hood": "North"}] * 3, 413, "rows: 3 rows, more than this server's --max_rows 2"),
    ],
)
def test_a_bad_row_is_refused_naming_its_row_and_column(rows, status, message):
    with pytest.raises(serve.BadRequest) as caught:
        serve.read_rows(rows, SCHEMA, "error", max_rows=2)
    assert caught.value.error.status == status
    assert str(caught.value).startswith(message)


@pytest.mark.parametrize(
    ("error", "message"),
    [
        ({"type": "json_invalid", "loc": ("body", 0), "ctx": {"error": "Expecting value"}}, "the body is not JSON"),
        ({"type": "missing", "loc": ("body", "rows"), "msg": "Field required"}, 'the body has no "rows"'),
        ({"type": "model_attributes_type", "loc": ("body",), "msg": "x"}, 'the body is not a JSON object {"rows"'),
    ],
)
def test_a_body_that_is_not_rows_gets_400_and_one_line(error, message):
    response = asyncio.run(serve._invalid_body(None, serve.RequestValidationError([error])))
    assert response.status_code == 400
    assert json.loads(response.body)["error"].startswith(message)


def test_a_float64_model_takes_what_float64_holds_and_refuses_beyond_it():
    x = serve.read_rows([{"area": 1e39, "hood": "North"}], SCHEMA, "error", max_rows=10, dtype="float64")
    assert x[0, 0] == 1e39
    with pytest.raises(serve.BadRequest, match="an integer of 401 digits is too large for float64"):
        serve.read_rows([{"area": -(10**400), "hood": "North"}], SCHEMA, "error", max_rows=10, dtype="float64")


def test_the_linear_predictor_fills_encodes_and_applies_the_coefficients():
    # y = 2 area + 10 [hood = North] - 5 [hood = South] + 1; a missing area is filled with 3
    predictor = LinearPredictor(
        weight=np.array([[2.0, 10.0, -5.0]]),
        bias=np.array([1.0]),
        levels=[0, 3],
        fill=np.array([3.0, 0.0]),
        dtype="float32",
    )
    x = np.array([[1.0, 0], [1.0, 1], [1.0, 2], [np.nan, 2], [1.0, -1]], dtype=np.float32)
    y = predictor(x)
    assert y.dtype == np.float32
    assert y[:, 0].tolist() == [3.0, 13.0, -2.0, 2.0, 3.0]  # code -1 (unknown): the reference level's


def _run(app_handler, *args):
    return asyncio.run(app_handler(*args))


class _Request:
    """What the error handlers read of a request."""

    def __init__(self, method: str, path: str) -> None:
        self.method = method
        self.url = type("URL", (), {"path": path})()


@pytest.mark.parametrize(
    ("status", "detail", "cause", "message"),
    [
        (404, "Not Found", None, "POST /nowhere: no such path (this server answers POST /predict, GET /health)"),
        (405, "Method Not Allowed", None, "POST /nowhere: method not allowed (this server answers POST /predict,"),
        (413, "over 100 bytes", None, "the body is larger than this server's limit (over 100 bytes)"),
        (400, "x", UnicodeDecodeError("utf-8", b"\xff", 0, 1, "invalid start byte"), "the body is not JSON (not UTF-8"),
        (400, "x", RecursionError("maximum recursion depth exceeded"), "the body is not JSON (nested too deeply)"),
    ],
)
def test_starlette_and_fastapi_refusals_become_one_line_of_json(status, detail, cause, message):
    err = serve.HTTPException(status, detail)
    err.__cause__ = cause
    response = _run(serve._http_error, _Request("POST", "/nowhere"), err)
    assert response.status_code == status
    assert json.loads(response.body)["error"].startswith(message)
    assert list(json.loads(response.body)) == ["error"] and b"\n" not in response.body


def _asgi_call(app, headers: list, chunks: list[bytes]) -> tuple[int, bytes]:
    """Drive an ASGI app with one POST: the status and body it sends back."""
    sent: list[dict] = []
    messages = [{"type": "http.request", "body": c, "more_body": i < len(chunks) - 1} for i, c in enumerate(chunks)]

    async def receive():
        return messages.pop(0)

    async def send(message):
        sent.append(message)

    scope = {"type": "http", "method": "POST", "path": "/predict", "headers": headers}
    asyncio.run(app(scope, receive, send))
    status = next(m["status"] for m in sent if m["type"] == "http.response.start")
    return status, b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")


async def _reads_the_body(scope, receive, send):
    while (await receive()).get("more_body"):
        pass
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"read"})


def test_a_body_over_the_limit_is_refused_by_its_length_before_it_is_read():
    limit = serve.BodyLimit(_reads_the_body, max_bytes=100)
    status, body = _asgi_call(limit, [(b"content-length", b"101")], [b"x" * 101])
    assert status == 413
    assert json.loads(body) == {"error": "the body is larger than this server's limit (101 bytes, over 100 bytes)"}
    assert _asgi_call(limit, [(b"content-length", b"100")], [b"x" * 100]) == (200, b"read")


def test_a_streamed_body_is_refused_once_it_passes_the_limit():
    limit = serve.BodyLimit(_reads_the_body, max_bytes=100)
    with pytest.raises(serve.HTTPException) as caught:  # FastAPI hands it to `_http_error`: 413, one line
        _asgi_call(limit, [], [b"x" * 60, b"x" * 60])
    assert caught.value.status_code == 413


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """The table config with a categorical column and `missing: mean`, trained briefly, and `predict` on ROWS."""
    tmp = tmp_path_factory.mktemp("serve")
    with open(tmp / "rows.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(ROWS[0]))
        writer.writeheader()
        writer.writerows([{k: "" if v is None else v for k, v in row.items()} for row in ROWS])
    args = ["--config", config("table.yaml"), *TRAIN, *QUIET, "--trainer.default_root_dir", str(tmp / "runs")]
    assert main(["fit", *args]) == 0
    assert main(["predict", *args, "--data.predict_path", str(tmp / "rows.csv"), "--ckpt_path", "last"]) == 0
    with open(latest_version(tmp / "runs") / "predictions.csv", newline="") as f:
        expected = [float(row["predicted_price_k"]) for row in csv.DictReader(f)]
    return args, expected


def test_a_batch_predicts_its_good_requests_as_predict_does_and_answers_a_bad_one_alone(trained):
    args, expected = trained
    servable = serve_cli.servable([*args, "--ckpt_path", "last", "--port", str(_free_port())])
    assert isinstance(servable.predictor, LinearPredictor)  # numpy only: the worker imports no torch
    api = serve.RegressionAPI(servable, max_batch_size=8)
    api.setup("cpu")
    bad = [{**ROWS[0], "rooms": "three"}]
    requests = [ROWS[:2], bad, ROWS[2:]]
    inputs = api.batch([api.decode_request(serve.PredictRequest(rows=rows)) for rows in requests])
    answers = [api.encode_response(output) for output in api.predict(inputs)]
    predicted = [row["predicted_price_k"] for row in answers[0]["predictions"] + answers[2]["predictions"]]
    np.testing.assert_allclose(predicted, expected, rtol=RTOL)
    assert answers[1].status_code == 400
    assert json.loads(answers[1].body) == {"error": "rows[0], column 'rooms': \"three\" is not a number"}


def test_a_prediction_beyond_float32_is_refused_not_answered_as_infinity(trained):
    args, _ = trained
    api = serve.RegressionAPI(serve_cli.servable([*args, "--ckpt_path", "last", "--port", str(_free_port())]))
    api.setup("cpu")
    huge = [ROWS[0], {**ROWS[0], "area_m2": 3e38}]  # within float32, but 1.9 k per m2 times it is not
    (answer,) = api.predict(api.batch([api.decode_request(serve.PredictRequest(rows=huge))]))
    assert answer.status == 400
    assert answer.message.startswith("rows[1]: the prediction is beyond float32 (inf)")


def test_a_non_linear_network_is_served_whole_by_its_own_forward(tmp_path):
    args = ["--config", config("mlp.yaml"), "--data.n_samples", "256", *QUIET, "--figure.enabled", "false"]
    args += ["--trainer.default_root_dir", str(tmp_path)]
    assert main(["fit", *args, "--trainer.max_epochs", "1"]) == 0
    servable = serve_cli.servable([*args, "--ckpt_path", "last", "--port", str(_free_port())])
    assert isinstance(servable.predictor, ModulePredictor)
    api = serve.RegressionAPI(servable)
    api.setup("cpu")
    rows = [dict.fromkeys(servable.schema["features"], 0.5), dict.fromkeys(servable.schema["features"], -1.0)]
    (answer,) = api.predict(api.batch([api.decode_request(serve.PredictRequest(rows=rows))]))
    model = pickle.loads(servable.predictor.pickled)
    with torch.inference_mode():
        expected = model(torch.tensor([[0.5] * 4, [-1.0] * 4]))
    np.testing.assert_array_equal(answer, expected.numpy())


def test_the_servable_file_is_read_once_and_removed(tmp_path):
    path = tmp_path / "model.pkl"
    predictor = LinearPredictor(np.ones((1, 1)), np.zeros(1), [0], None, "float32")
    Servable(predictor, SCHEMA, ["predicted_price"], "error", "x.ckpt", {"port": 8123}).save(path)
    assert Servable.load(path).options == {"port": 8123}
    assert not path.exists()


# --- the real server ----------------------------------------------------------------------------------------------
def _post(port: int, body: bytes | dict, timeout: float = 30) -> tuple[int, dict]:
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/predict", data=data, headers={"Content-Type": "application/json"}
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@contextlib.contextmanager
def _serving(args: list[str], tmp: Path | None = None) -> Iterator[tuple[int, subprocess.Popen]]:
    """`python -m lit_linreg serve ARGS` in a process group of its own on a free loopback port, until the block
    ends (Ctrl-C to the group, as a terminal sends it, unless a test stopped it)."""
    port = _free_port()
    cmd = [sys.executable, "-m", "lit_linreg", "serve", *args, "--port", str(port)]
    env = {**os.environ, "PYTHONPATH": str(ROOT), **({"TMPDIR": str(tmp)} if tmp else {})}
    process = subprocess.Popen(cmd, cwd=ROOT, env=env, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            assert process.poll() is None, process.stderr.read()
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as response:
                    if response.read() == b"ok":
                        break
            except OSError:
                time.sleep(0.5)
        else:
            pytest.fail("the server did not answer /health within 180 s")
        yield port, process
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGINT)  # Ctrl-C: LitServe stops its workers
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


@pytest.fixture(scope="module")
def server_tmp(tmp_path_factory) -> Path:
    """The TMPDIR of the module's server: where its temporary files go."""
    return tmp_path_factory.mktemp("server-tmp")


@pytest.fixture(scope="module")
def server(trained, server_tmp):
    """The trained model served with the defaults, until the module ends (its last test stops it)."""
    args, _ = trained
    with _serving([*args, "--ckpt_path", "last"], server_tmp) as served:
        yield served


def _group(pid: int) -> dict[int, str]:
    """The processes of process group `pid` (Linux's /proc), with their command lines."""
    found = {}
    for entry in Path("/proc").iterdir():
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            if entry.name.isdigit() and int(fields[2]) == pid:
                found[int(entry.name)] = (entry / "cmdline").read_text().replace("\0", " ")
        except (OSError, IndexError):
            continue  # ended meanwhile, or not a process
    return found


@pytest.mark.slow
def test_the_server_answers_what_predict_wrote_for_the_same_rows(server, trained):
    port, _ = server
    status, answer = _post(port, {"rows": ROWS})
    assert status == 200
    np.testing.assert_allclose([p["predicted_price_k"] for p in answer["predictions"]], trained[1], rtol=RTOL)


@pytest.mark.slow
def test_concurrent_single_row_requests_each_get_their_own_row(server, trained):
    port, _ = server
    requests = [{"rows": [ROWS[i % 3]]} for i in range(48)]
    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(lambda body: _post(port, body), requests))
    for i, (status, answer) in enumerate(answers):
        assert status == 200
        assert answer["predictions"][0]["predicted_price_k"] == pytest.approx(trained[1][i % 3], rel=RTOL)


@pytest.mark.slow
@pytest.mark.parametrize(
    ("body", "status", "message"),
    [
        ({"rows": [{k: v for k, v in ROWS[0].items() if k != "rooms"}]}, 400, "rows[0]: no column 'rooms' (the"),
        ({"rows": [{**ROWS[0], "rooms": "3 beds"}]}, 400, "rows[0], column 'rooms': \"3 beds\" is not a number"),
        ({"rows": [ROWS[0], {**ROWS[0], "neighbourhood": "Moon"}]}, 400, "rows[1], column 'neighbourhood': category"),
        (b'{"rows": [', 400, "the body is not JSON"),
        ({"rows": ROWS * 4000}, 413, "rows: 12000 rows, more than this server's --max_rows 10000"),
    ],
)
def test_a_bad_request_gets_4xx_and_one_line_and_the_server_keeps_serving(server, trained, body, status, message):
    port, process = server
    code, answer = _post(port, body)
    assert code == status
    assert answer["error"].startswith(message) and "\n" not in answer["error"]
    assert _post(port, {"rows": ROWS[:1]})[1]["predictions"][0]["predicted_price_k"] == pytest.approx(
        trained[1][0], rel=RTOL
    )
    assert process.poll() is None


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--port", "80"], "--port must be from 1024 to 65535, got 80"),
        (["--workers", "0"], "--workers must be at least 1, got 0"),
        (["--host", "example.com"], "--host must be 127.0.0.1, 0.0.0.0 or :: (LitServe's choices), got 'example.com'"),
    ],
)
def test_serve_refuses_a_port_or_host_it_cannot_listen_on_in_one_line(trained, capsys, flags, message):
    args, _ = trained
    capsys.readouterr()
    assert main(["serve", *args, "--ckpt_path", "last", *flags]) == 2
    assert capsys.readouterr().err == f"lit-linreg: error: {message}\n"


def _request(port: int, method: str, path: str, body: bytes = b"", json_body: bool = True, chunked: bool = False):
    """One request, as raw as it came: the status and the bytes of the answer."""
    headers = {"Content-Type": "application/json"} if json_body else {}
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
    try:
        if chunked:  # no Content-Length: the size shows only as the body streams in
            pieces = iter([body[i : i + (1 << 16)] for i in range(0, len(body), 1 << 16)])
            connection.request(method, path, body=pieces, headers=headers, encode_chunked=True)
        else:
            connection.request(method, path, body=body, headers=headers)
        response = connection.getresponse()
        return response.status, response.read()
    finally:
        connection.close()


def _row_with(value: str) -> bytes:
    """A body of one good row whose area_m2 is the JSON text `value`."""
    return json.dumps({"rows": [{**ROWS[0], "area_m2": "VALUE"}]}).replace('"VALUE"', value).encode()


LIMIT = serve.body_limit(features=5, max_rows=10_000)  # the table's 5 features, the default --max_rows
BAD_REQUESTS = {  # name: (method, path, body, sent as JSON, chunked, status)
    "an integer beyond float range": ("POST", "/predict", _row_with("1" + "0" * 400), True, False, 400),
    "an integer of 5,000 digits": ("POST", "/predict", _row_with("9" * 5000), True, False, 400),
    "a number beyond float32": ("POST", "/predict", _row_with("1e39"), True, False, 400),
    "infinity": ("POST", "/predict", _row_with("Infinity"), True, False, 400),
    "a prediction beyond float32": ("POST", "/predict", _row_with("3e38"), True, False, 400),
    "invalid UTF-8": ("POST", "/predict", b'{"rows": [{"neighbourhood": "\xff\xfe"}]}', True, False, 400),
    "nesting 200,000 deep": ("POST", "/predict", b"[" * 200_000 + b"]" * 200_000, True, False, 400),
    "rows nesting 200,000 deep": (
        "POST",
        "/predict",
        b'{"rows": ' + b"[" * 200_000 + b"]" * 200_000 + b"}",
        True,
        False,
        400,
    ),
    "a value nested 900 deep": ("POST", "/predict", _row_with("[" * 900 + "]" * 900), True, False, 400),
    "a body over the limit": ("POST", "/predict", b" " * (LIMIT + 1), True, False, 413),
    "a streamed body over the limit": ("POST", "/predict", b" " * (LIMIT + 1), True, True, 413),
    "an empty body": ("POST", "/predict", b"", True, False, 400),
    "half a body": ("POST", "/predict", b'{"rows": [', True, False, 400),
    "JSON null": ("POST", "/predict", b"null", True, False, 400),
    "a JSON list": ("POST", "/predict", b"[1, 2]", True, False, 400),
    "rows not a list": ("POST", "/predict", b'{"rows": "all"}', True, False, 400),
    "a key besides rows": ("POST", "/predict", b'{"rows": [], "limit": 1}', True, False, 400),
    "form data": ("POST", "/predict", b"rows=1", False, False, 400),
    "a wrong method": ("GET", "/predict", b"", True, False, 405),
    "a wrong method on /health": ("DELETE", "/health", b"", True, False, 405),
    "a wrong path": ("POST", "/predictions", _row_with("1"), True, False, 404),
}


@pytest.mark.slow
def test_every_bad_request_gets_a_4xx_and_one_line_of_json_and_the_server_keeps_serving(server, trained):
    port, process = server
    answers = {name: _request(port, *request[:5]) for name, request in BAD_REQUESTS.items()}
    for name, (status, body) in answers.items():
        assert status == BAD_REQUESTS[name][5], (name, status, body[:200])
        assert body.count(b"\n") == 0 and list(json.loads(body)) == ["error"], (name, body[:200])
        assert json.loads(body)["error"], name
    assert json.loads(answers["an integer beyond float range"][1])["error"] == (
        "rows[0], column 'area_m2': an integer of 401 digits is too large for float32"
    )
    assert _post(port, {"rows": ROWS[:1]})[1]["predictions"][0]["predicted_price_k"] == pytest.approx(
        trained[1][0], rel=RTOL
    )
    assert process.poll() is None


@pytest.mark.slow
def test_no_process_of_a_linear_models_server_holds_torch_or_lightning(server):
    port, process = server
    processes = _group(process.pid)
    assert len(processes) >= 4  # the server, LitServe's queue manager, its HTTP and inference workers
    for pid, command in processes.items():
        maps = Path(f"/proc/{pid}/maps").read_text()
        assert "libtorch" not in maps and "/lightning/" not in maps, command


def _group_cpu_s(pid: int) -> float:
    """The CPU seconds every process of group `pid` has used so far, summed (Linux's /proc)."""
    ticks = 0
    for child in _group(pid):
        with contextlib.suppress(OSError, IndexError):
            fields = Path(f"/proc/{child}/stat").read_text().rsplit(")", 1)[1].split()
            ticks += int(fields[11]) + int(fields[12])
    return ticks / os.sysconf("SC_CLK_TCK")


@pytest.mark.slow
def test_an_idle_server_takes_next_to_no_cpu(server, trained):
    # LitServe's own batched loop asks its queue manager for work again and again: a bare LitServe API takes about
    # 1.1 cores doing nothing. This server's loop waits for requests (waiting_loop.py).
    port, process = server
    assert _post(port, {"rows": ROWS[:1]})[0] == 200
    time.sleep(0.5)
    began = _group_cpu_s(process.pid)
    time.sleep(3)
    assert (_group_cpu_s(process.pid) - began) / 3 < 0.15  # of one core


@pytest.mark.slow
def test_two_workers_serve_side_by_side(trained):
    args, expected = trained
    with _serving([*args, "--ckpt_path", "last", "--workers", "2"]) as (port, process):
        workers = [c for c in _group(process.pid).values() if "multiprocessing.spawn" in c]
        assert len(workers) == 2
        with ThreadPoolExecutor(8) as pool:
            answers = list(pool.map(lambda i: _post(port, {"rows": [ROWS[i % 3]]}), range(32)))
    for i, (status, answer) in enumerate(answers):
        assert status == 200
        assert answer["predictions"][0]["predicted_price_k"] == pytest.approx(expected[i % 3], rel=RTOL)


@pytest.mark.slow
def test_sigterm_ends_the_server_and_every_worker_with_exit_143_and_one_line(server, server_tmp):
    # Last of the server's tests: it stops the module's server. SIGTERM goes to the server process alone, as a
    # scheduler or `docker stop` sends it; left to its default it orphaned the HTTP and inference workers.
    port, process = server
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=60) == 128 + signal.SIGTERM
    assert process.stderr.read().splitlines()[-1:] == ["lit-linreg: error: stopped by SIGTERM"]
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            os.killpg(process.pid, 0)  # a worker of the group still running
        except ProcessLookupError:
            break
        time.sleep(0.5)
    else:
        pytest.fail("a worker of the server outlived it")
    with socket.socket() as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as a server binds: TIME_WAIT is no hold
        probe.bind(("127.0.0.1", port))  # no worker listens on the port any more
    assert _left_in(server_tmp) == []  # the answers' IPC folder (answers.py) removed


# --- the server started while the model is resolved (launch.py) -------------------------------------------------
def test_the_launcher_reads_the_server_flags_with_the_clis_defaults():
    args = ["--config", config("table.yaml"), "--ckpt_path", "last", "--data.n_samples", "-1", "--port", "9000"]
    args += ["--workers=2", "--batch_timeout", "0.25", "--host", "0.0.0.0"]
    assert launch.server_options(args) == {
        "host": "0.0.0.0",
        "port": 9000,
        "workers": 2,
        "max_batch_size": 64,
        "batch_timeout": 0.25,
        "max_rows": 10_000,
    }
    assert launch.server_options(["--config", config("table.yaml")]) == {k: v[1] for k, v in launch.OPTIONS.items()}


@pytest.mark.parametrize(
    "args",
    [
        ["--config", "{config naming port}"],
        ["--config", "no-such-file.yaml"],
        ["--po", "9000"],  # an abbreviation, as argparse may read it
        ["--conf", "other.yaml"],
        ["--port", "08000"],
        ["--batch_timeout", "1e-3"],
        ["--port"],
        ["-h"],
        ["--help"],
        ["--print_config"],
    ],
)
def test_a_server_flag_that_may_come_from_elsewhere_leaves_serve_to_the_cli(tmp_path, args):
    named = tmp_path / "serve.yaml"
    named.write_text(Path(config("table.yaml")).read_text() + "port: 9000\n")
    args = [str(named) if a == "{config naming port}" else a for a in args]
    assert launch.server_options(["--config", config("table.yaml"), *args]) is None


def test_the_launcher_reads_the_flags_as_the_cli_does(trained):
    args, _ = trained
    flags = ["--ckpt_path", "last", "--port", str(_free_port()), "--workers", "3", "--max_rows=50"]
    options = launch.server_options([*args, *flags])
    assert options is not None and options["workers"] == 3 and options["max_rows"] == 50
    assert serve_cli.servable([*args, *flags]).options == options


def _waiting_for_the_model(pid: int, timeout: float = 120) -> None:
    """Until the inference worker of server `pid` waits in `setup` for the model: it ignores Ctrl-C there."""
    deadline = time.monotonic() + timeout
    while True:
        workers = [p for p, command in _group(pid).items() if "multiprocessing.spawn" in command]
        with contextlib.suppress(OSError, StopIteration):
            status = Path(f"/proc/{workers[0]}/status").read_text().splitlines() if workers else []
            if int(next(line for line in status if line.startswith("SigIgn:")).split()[1], 16) & (1 << 1):
                return  # SIGINT (2) ignored: setup has begun
        assert time.monotonic() < deadline, f"no worker waiting for the model within {timeout} s"
        time.sleep(0.05)


def _ended(process: subprocess.Popen, timeout: float = 60) -> tuple[int, str]:
    """The exit code and stderr of `process`, once every process of its group has ended."""
    code, err = process.wait(timeout=timeout), process.stderr.read()
    deadline = time.monotonic() + 30
    while _group(process.pid):
        assert time.monotonic() < deadline, f"left running: {_group(process.pid)}"
        time.sleep(0.1)
    return code, err


def _left_in(tmp: Path) -> list[str]:
    """What a server left in its TMPDIR, but for torch's compile cache, which any import of torch creates there."""
    return [path.name for path in tmp.iterdir() if not path.name.startswith("torchinductor_")]


def _serve_process(args: list[str], tmp_path: Path) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "lit_linreg", "serve", *args, "--port", str(_free_port())]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "TMPDIR": str(tmp_path)}  # where its servable goes
    return subprocess.Popen(cmd, cwd=ROOT, env=env, stderr=subprocess.PIPE, text=True, start_new_session=True)


@pytest.mark.slow
def test_a_failed_resolution_stops_the_server_started_meanwhile_with_its_one_line_and_code(trained, tmp_path):
    args, _ = trained
    process = _serve_process([*args, "--ckpt_path", str(tmp_path / "gone.ckpt")], tmp_path)
    _waiting_for_the_model(process.pid)
    code, err = _ended(process)
    assert code == 2
    assert err.splitlines()[-1] == f"lit-linreg: error: {tmp_path / 'gone.ckpt'}: no such checkpoint file"
    assert "Traceback" not in err and "serving" not in err
    assert _left_in(tmp_path) == []  # nothing left behind


@pytest.mark.slow
@pytest.mark.parametrize(
    ("signum", "group", "line"),
    [
        (signal.SIGTERM, False, "stopped by SIGTERM"),
        (signal.SIGTERM, True, "stopped by SIGTERM"),
        (signal.SIGINT, True, "interrupted"),
    ],
)
def test_a_signal_while_the_model_is_resolved_stops_everything_with_128_plus_it(trained, tmp_path, signum, group, line):
    args, _ = trained
    process = _serve_process([*args, "--ckpt_path", "last"], tmp_path)
    _waiting_for_the_model(process.pid)
    assert any("lit_linreg.deploy.resolve" in command for command in _group(process.pid).values())  # still resolving
    if group:  # as a terminal's Ctrl-C, or systemd's stop, sends it
        os.killpg(process.pid, signum)
    else:  # as `docker stop` sends it
        process.send_signal(signum)
    code, err = _ended(process)
    assert code == 128 + signum
    assert err.splitlines()[-1] == f"lit-linreg: error: {line}" and "Traceback" not in err
    assert err.count("lit-linreg: error:") == 1
    assert _left_in(tmp_path) == []


@pytest.mark.slow
def test_a_config_that_names_a_server_flag_is_served_through_the_two_steps_in_turn(trained, tmp_path):
    args, expected = trained
    named = tmp_path / "serve.yaml"
    named.write_text("max_rows: 2\n")  # only the CLI reads it: the server starts after it
    with _serving([*args, "--config", str(named), "--ckpt_path", "last"]) as (port, process):
        commands = list(_group(process.pid).values())
        assert not any("lit_linreg.deploy.resolve" in c for c in commands)
        assert any(f"-m lit_linreg.deploy {tempfile.gettempdir()}" in c for c in commands)  # the CLI became the server
        assert _post(port, {"rows": ROWS})[1]["error"] == "rows: 3 rows, more than this server's --max_rows 2"
        status, answer = _post(port, {"rows": ROWS[:1]})
    assert status == 200 and answer["predictions"][0]["predicted_price_k"] == pytest.approx(expected[0], rel=RTOL)
    assert process.returncode == 128 + signal.SIGINT


@pytest.mark.parametrize("command", ["serve", "export"])
def test_help_names_the_command_and_its_own_flags(command, capsys):
    with pytest.raises(SystemExit) as stop:
        main([command, "--help"])
    assert stop.value.code == 0
    usage = capsys.readouterr().out
    assert usage.startswith(f"usage: lit-linreg [options] {command} [-c CONFIG]")
    assert ("--port" in usage) == (command == "serve") and ("--output" in usage) == (command == "export")
