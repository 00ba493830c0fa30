"""`serve`: rows read as `predict` reads them, the same predictions, and every bad request answered in one line."""

from __future__ import annotations

import asyncio
import csv
import json
import math
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from lit_linreg.cli.main import main
from tests.conftest import QUIET, ROOT, config, latest_version

pytest.importorskip("litserve")  # the `serve` extra
from lit_linreg import serve  # noqa: E402

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


def test_rows_become_codes_and_a_missing_number_nan_under_missing_mean():
    schema = {**SCHEMA, "missing": "mean"}
    rows = [{"area": 50, "hood": "South", "other": "ignored"}, {"area": None, "hood": "Central"}]
    x = serve.read_rows(rows, schema, "error", max_rows=10)
    assert x.dtype == np.float32
    assert x[0].tolist() == [50.0, 2.0]
    assert math.isnan(x[1, 0]) and x[1, 1] == 0.0


def test_a_model_that_trained_in_float64_reads_its_requests_rows_in_float64():
    x = serve.read_rows([{"area": 1 + 2**-40, "hood": "North"}], SCHEMA, "error", max_rows=10, dtype=np.float64)
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
    api = serve.RegressionAPI([*args, "--ckpt_path", "last"], "error", 100, max_batch_size=8, batch_timeout=0.0)
    api.setup("cpu")
    bad = [{**ROWS[0], "rooms": "three"}]
    requests = [ROWS[:2], bad, ROWS[2:]]
    inputs = api.batch([api.decode_request(serve.PredictRequest(rows=rows)) for rows in requests])
    answers = [api.encode_response(output) for output in api.predict(inputs)]
    predicted = [row["predicted_price_k"] for row in answers[0]["predictions"] + answers[2]["predictions"]]
    np.testing.assert_allclose(predicted, expected, rtol=1e-6)
    assert answers[1].status_code == 400
    assert json.loads(answers[1].body) == {"error": "rows[0], column 'rooms': \"three\" is not a number"}


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


@pytest.fixture(scope="module")
def server(trained):
    """`python -m lit_linreg serve` in a process of its own on a free loopback port, until the module ends."""
    args, _ = trained
    port = _free_port()
    cmd = [sys.executable, "-m", "lit_linreg", "serve", *args, "--ckpt_path", "last", "--port", str(port)]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
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
        if process.poll() is None:  # the last test stops it itself
            os.killpg(process.pid, signal.SIGINT)  # Ctrl-C: LitServe stops its workers
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


@pytest.mark.slow
def test_the_server_answers_what_predict_wrote_for_the_same_rows(server, trained):
    port, _ = server
    status, answer = _post(port, {"rows": ROWS})
    assert status == 200
    np.testing.assert_allclose([p["predicted_price_k"] for p in answer["predictions"]], trained[1], rtol=1e-6)


@pytest.mark.slow
def test_concurrent_single_row_requests_each_get_their_own_row(server, trained):
    port, _ = server
    requests = [{"rows": [ROWS[i % 3]]} for i in range(48)]
    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(lambda body: _post(port, body), requests))
    for i, (status, answer) in enumerate(answers):
        assert status == 200
        assert answer["predictions"][0]["predicted_price_k"] == pytest.approx(trained[1][i % 3], rel=1e-6)


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
    assert _post(port, {"rows": ROWS[:1]})[1]["predictions"][0]["predicted_price_k"] == pytest.approx(trained[1][0])
    assert process.poll() is None


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--port", "80"], "--port must be from 1024 to 65535, got 80"),
        (["--host", "example.com"], "--host must be 127.0.0.1, 0.0.0.0 or :: (LitServe's choices), got 'example.com'"),
    ],
)
def test_serve_refuses_a_port_or_host_it_cannot_listen_on_in_one_line(trained, capsys, flags, message):
    args, _ = trained
    capsys.readouterr()
    assert main(["serve", *args, "--ckpt_path", "last", *flags]) == 2
    assert capsys.readouterr().err == f"lit-linreg: error: {message}\n"


@pytest.mark.slow
def test_sigterm_ends_the_server_and_every_worker_with_exit_143_and_one_line(server):
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


@pytest.mark.parametrize("command", ["serve", "export"])
def test_help_names_the_command_and_its_own_flags(command, capsys):
    with pytest.raises(SystemExit) as stop:
        main([command, "--help"])
    assert stop.value.code == 0
    usage = capsys.readouterr().out
    assert usage.startswith(f"usage: lit-linreg [options] {command} [-c CONFIG]")
    assert ("--port" in usage) == (command == "serve") and ("--output" in usage) == (command == "export")
