"""How `serve`'s processes pass work: answers over a ZeroMQ pipe that loses none, and a batched loop that waits
for requests rather than polling for them."""

from __future__ import annotations

import asyncio
import os
import pickle
import queue
import stat
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

pytest.importorskip("litserve")  # the `serve` extra
from lit_linreg.deploy import answers, waiting_loop  # noqa: E402
from lit_linreg.deploy.answers import ZMQAnswers  # noqa: E402
from lit_linreg.deploy.waiting_loop import WaitingBatchedLoop  # noqa: E402

pytestmark = pytest.mark.skipif(os.name == "nt", reason="ZeroMQ's IPC sockets: not on Windows")


def _receive(transport: ZMQAnswers, n: int) -> list:
    async def every() -> list:
        return [await transport.areceive(0) for _ in range(n)]

    return asyncio.run(every())


def test_answers_sent_before_the_http_server_listens_all_arrive_in_order(tmp_path):
    worker, http = ZMQAnswers(str(tmp_path)), pickle.loads(pickle.dumps(ZMQAnswers(str(tmp_path))))
    items = [(f"uid-{i}", ({"predictions": [{"y": float(i)}]}, "OK", "REGULAR", 0)) for i in range(2500)]
    # More than ZeroMQ's 1,000-message queue, sent from another thread before the receiving end is bound: a
    # broadcast socket (LitServe's PUB/SUB) drops these; a pipe holds them, then waits for room.
    sender = threading.Thread(target=lambda: [worker.send(item, 0) for item in items])
    sender.start()
    time.sleep(0.3)
    received = _receive(http, len(items))
    sender.join(timeout=10)
    assert received == items
    worker.close()
    http.close()


def test_each_http_server_gets_only_its_own_answers(tmp_path):
    worker = ZMQAnswers(str(tmp_path))
    first, second = ZMQAnswers(str(tmp_path)), ZMQAnswers(str(tmp_path))

    async def both() -> tuple:
        ready = [first.areceive(0), second.areceive(1)]
        worker.send("for 1", 1)
        worker.send("for 0", 0)
        return tuple(await asyncio.gather(*ready))

    assert asyncio.run(both()) == ("for 0", "for 1")
    for transport in (worker, first, second):
        transport.close()


def test_waiting_for_an_answer_with_a_timeout_ends_in_empty(tmp_path):
    http = ZMQAnswers(str(tmp_path))
    began = time.monotonic()
    with pytest.raises(queue.Empty):
        asyncio.run(http.areceive(0, timeout=0.2))
    assert 0.15 < time.monotonic() - began < 2
    http.close()


def test_the_answers_folder_is_this_users_only_and_its_paths_fit_a_socket(monkeypatch, tmp_path):
    monkeypatch.setattr(answers.tempfile, "tempdir", str(tmp_path / ("long" * 30)))
    (tmp_path / ("long" * 30)).mkdir()
    folder = answers.answers_folder()
    try:
        assert stat.S_IMODE(Path(folder).stat().st_mode) == 0o700
        assert len(ZMQAnswers(folder).address(99)) - len("ipc://") <= answers.IPC_PATH_MAX
        assert folder.startswith("/tmp/")  # the temporary folder's path was too long for a socket's
    finally:
        Path(folder).rmdir()


class _API:
    """What LitServe's batching reads of a LitAPI."""

    max_batch_size, batch_timeout, request_timeout, stream = 4, 0.0, 30, False


def _request(i: int) -> tuple:
    return (0, f"uid-{i}", time.monotonic(), {"rows": [i]})


def test_the_loop_takes_what_waits_up_to_a_batch_without_waiting_for_more():
    requests = queue.Queue()
    for i in range(6):
        requests.put(_request(i))
    loop = WaitingBatchedLoop()
    first, _ = loop.get_batch_requests(_API(), requests, transport=None)
    second, _ = loop.get_batch_requests(_API(), requests, transport=None)
    assert [uid for _, uid, _ in first] == ["uid-0", "uid-1", "uid-2", "uid-3"]
    assert [uid for _, uid, _ in second] == ["uid-4", "uid-5"]


def test_the_loop_waits_for_a_request_rather_than_asking_again_and_again(monkeypatch):
    monkeypatch.setattr(waiting_loop, "WAIT_S", 2.0)
    requests, asks = queue.Queue(), []
    get = requests.get
    monkeypatch.setattr(requests, "get", lambda *a, **k: asks.append("get") or get(*a, **k))
    monkeypatch.setattr(requests, "get_nowait", lambda: asks.append("get_nowait") or get(block=False))
    threading.Timer(0.3, requests.put, args=(_request(7),)).start()
    began = time.monotonic()
    batch, _ = WaitingBatchedLoop().get_batch_requests(_API(), requests, transport=None)
    assert [uid for _, uid, _ in batch] == ["uid-7"]
    assert 0.25 < time.monotonic() - began < 1.5  # it waited for the request, not the whole WAIT_S
    assert asks == ["get", "get_nowait"]  # one wait, then one look for more: no polling


def test_with_nothing_to_do_the_loop_returns_empty_after_its_wait(monkeypatch):
    monkeypatch.setattr(waiting_loop, "WAIT_S", 0.2)
    began = time.monotonic()
    assert WaitingBatchedLoop().get_batch_requests(_API(), queue.Queue(), transport=None) == ([], [])
    assert 0.15 < time.monotonic() - began < 1.0


@pytest.mark.parametrize(
    "missing", ["del litserve.LitServer._init_manager", "sys.modules['litserve.transport.base'] = None"]
)
def test_a_litserve_without_the_hooks_serves_through_its_own_queues_and_says_so_in_one_line(missing):
    # Another LitServe release may drop the private API answers.py builds on: serve.py must still import, and
    # build LitServe's own server, not fail with a traceback.
    program = "\n".join(
        [
            "import sys, litserve",
            missing,
            "from lit_linreg.deploy import serve",
            "print(serve._server_class() is litserve.LitServer)",
        ]
    )
    done = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout == "True\n"
    (line,) = done.stderr.splitlines()
    assert line.startswith("lit-linreg: warning: litserve ")
    assert "LitServer._init_manager or litserve.transport.base" in line
    assert line.endswith("answers go through LitServe's own queues")
