"""An S3-compatible object store for the tests that read tables over the network: moto's server, on a loopback port.

The server is moto's own WSGI application served by werkzeug, as `moto_server` serves it, with one layer added in
front: every request is recorded with the bytes its answer carried, so that a test can say which byte ranges of
which object a reader fetched. Nothing of the client (pyarrow's S3 filesystem, the AWS SDK) is replaced.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from pathlib import Path

import pytest

CREDENTIALS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}


@dataclass(frozen=True)
class Served:
    """One request the store answered: `GET /bucket/key`, the byte range asked for, and the bytes sent."""

    method: str
    path: str
    range: str | None
    sent: int


class Store:
    """moto's S3 server on 127.0.0.1, a free port, in a thread; `served` lists the requests it answered."""

    def __init__(self) -> None:
        from moto.server import DomainDispatcherApplication, MotoRequestHandler, create_backend_app
        from werkzeug.serving import make_server

        logging.getLogger("werkzeug").setLevel(logging.WARNING)  # a line a request otherwise
        self.served: list[Served] = []
        self._lock = threading.Lock()
        app = DomainDispatcherApplication(create_backend_app)
        self._server = make_server(
            "127.0.0.1", 0, self._counting(app), threaded=True, request_handler=MotoRequestHandler
        )
        self.endpoint = f"http://127.0.0.1:{self._server.server_port}"
        self._thread = threading.Thread(target=self._server.serve_forever, name="s3-store", daemon=True)
        self._thread.start()

    def _counting(self, app):
        def counted(environ, start_response):
            body = list(app(environ, start_response))  # what moto answers, whole: a test's objects are small
            request = Served(
                environ["REQUEST_METHOD"], environ["PATH_INFO"], environ.get("HTTP_RANGE"), sum(map(len, body))
            )
            with self._lock:
                self.served.append(request)
            return body

        return counted

    def filesystem(self):
        """pyarrow's S3 filesystem on this store, allowed to make buckets (the code under test never is)."""
        import pyarrow.fs as pafs

        return pafs.S3FileSystem(endpoint_override=self.endpoint, allow_bucket_creation=True)

    def upload(self, local: Path, bucket: str, prefix: str) -> str:
        """Copy a file or a directory to `s3://bucket/prefix` (the bucket made if new); returns that URL."""
        import pyarrow.fs as pafs

        fs = self.filesystem()
        fs.create_dir(bucket)
        pafs.copy_files(str(local), f"{bucket}/{prefix}", destination_filesystem=fs)
        return f"s3://{bucket}/{prefix}"

    def requests_for(self, key: str) -> list[Served]:
        """The GET requests answered for objects whose path starts with `/key`."""
        with self._lock:
            return [r for r in self.served if r.method == "GET" and r.path.startswith(f"/{key}")]

    def set_auth(self, enforced: bool) -> None:
        """Check every request's credentials against moto's IAM from now on (moto's own switch), or stop checking."""
        import urllib.request

        request = urllib.request.Request(
            f"{self.endpoint}/moto-api/reset-auth",
            data=b"0" if enforced else b"inf",
            method="POST",
            headers={"Content-Type": "text/plain"},
        )
        urllib.request.urlopen(request, timeout=10).close()

    def stop(self) -> None:
        self._server.shutdown()
        self._thread.join(timeout=10)


@pytest.fixture(scope="module")
def store():
    """An S3-compatible store on a loopback port, stopped after the module's tests; credentials and the endpoint
    in the environment, as a user's shell would hold them (AWS_ENDPOINT_URL: the AWS tools' own variable)."""
    server = Store()
    with pytest.MonkeyPatch.context() as env:
        for name, value in CREDENTIALS.items():
            env.setenv(name, value)
        env.setenv("AWS_ENDPOINT_URL", server.endpoint)
        for name in ("AWS_ENDPOINT_URL_S3", "AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_IGNORE_CONFIGURED_ENDPOINT_URLS"):
            env.delenv(name, raising=False)
        env.setenv("AWS_CONFIG_FILE", "/nonexistent/aws-config")  # this machine's own AWS files play no part
        env.setenv("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent/aws-credentials")
        env.setenv("AWS_EC2_METADATA_DISABLED", "true")
        try:
            yield server
        finally:
            server.stop()
