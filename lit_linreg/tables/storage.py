"""A table in an object store: `s3://bucket/prefix/`, `gs://`, `abfs://`, `az://`, read over the network.

pyarrow's own filesystems read `s3://`, `gs://` (or `gcs://`) and `abfs[s]://` URLs that name their account;
any other scheme fsspec has a package for is read through fsspec (`az://` with adlfs installed). Only the byte
ranges asked for cross the network: a Parquet file's footer, then the column chunks of the row groups read.

Credentials come from each store's standard environment variables and config files (`AWS_ACCESS_KEY_ID`,
`AWS_PROFILE` and `~/.aws/`; `GOOGLE_APPLICATION_CREDENTIALS`; `AZURE_STORAGE_*`), never from the run's config,
which is saved with the run: `storage_options` takes the endpoint and the region alone, and a URL's query is
refused. The endpoint may also come from `AWS_ENDPOINT_URL_S3` or `AWS_ENDPOINT_URL`, as the AWS tools read them.

A file's version (its size and what the store says of it: ETag, modification time) is recorded the first time
it is opened, and every later open compares: a table rewritten during a run is refused, not read half old, half
new. Connections time out and retry briefly, so that a store out of reach is reported within seconds.
"""

from __future__ import annotations

import os
import re
from pathlib import PurePosixPath
from typing import Any

import pyarrow as pa
import pyarrow.fs as pafs

from lit_linreg.errors import ConfigError, DataError

SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://")
OPTIONS = ("endpoint", "region")  # what `storage_options` may set: no credentials
CONNECT_TIMEOUT = 3.0  # seconds to open a connection to the store
ATTEMPTS = 3  # tries of an S3 request, the first included
GCS_RETRY_SECONDS = 10  # how long a GCS request is retried
DENIED = (
    r"ACCESS_DENIED|AccessDenied|Forbidden|INVALID_ACCESS_KEY|InvalidAccessKeyId|SIGNATURE_DOES_NOT_MATCH|"
    r"HTTP status 403|PERMISSION_DENIED|AuthorizationFailure"
)
UNREACHABLE = r"NETWORK_CONNECTION|curlCode|Could not resolve|Couldn't connect|Connection refused|timed out|UNAVAILABLE"
CREDENTIALS = {  # where each store's client looks for them, for the message of an access denied
    "s3": "AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, AWS_PROFILE or ~/.aws/credentials",
    "gcs": "GOOGLE_APPLICATION_CREDENTIALS or gcloud's application-default login",
    "gs": "GOOGLE_APPLICATION_CREDENTIALS or gcloud's application-default login",
    "abfs": "AZURE_STORAGE_ACCOUNT_KEY, AZURE_CLIENT_ID/AZURE_TENANT_ID/AZURE_CLIENT_SECRET or az login",
    "az": "AZURE_STORAGE_ACCOUNT_KEY, AZURE_CLIENT_ID/AZURE_TENANT_ID/AZURE_CLIENT_SECRET or az login",
}


def is_url(path: Any) -> bool:
    """Whether `path` names a table in an object store (`scheme://...`) rather than a path on this machine."""
    return isinstance(path, str) and bool(SCHEME.match(path))


def filesystem(url: str, storage_options: dict | None = None) -> tuple[pafs.FileSystem, str]:
    """The filesystem reading `url`, and `url`'s path in it (no trailing slash)."""
    options = dict(storage_options or {})
    unknown = sorted(set(options) - set(OPTIONS))
    if unknown:
        raise ConfigError(
            f"data.storage_options takes {' and '.join(OPTIONS)}, not {', '.join(unknown)}: credentials come from"
            " the store's own environment variables and config files, never from the run's config"
        )
    if "?" in url:
        raise ConfigError(
            f"{url.split('?')[0]}: a URL with a query (?...) is refused: give the endpoint and region in"
            " --data.storage_options, and credentials in the store's environment"
        )
    scheme = SCHEME.match(url)[1].lower()
    try:
        if scheme in ("s3", "s3a"):
            fs, path = _s3(options, url), url.split("://", 1)[1]
        elif scheme in ("gs", "gcs"):
            if "region" in options:
                raise ConfigError(f"{url}: data.storage_options region applies to s3:// tables, not to gs://")
            fs, path = _gcs(options), url.split("://", 1)[1]
        else:
            if options:
                raise ConfigError(f"{url}: data.storage_options applies to s3:// and gs:// tables")
            fs, path = _other(url, scheme)
    except (pa.ArrowException, OSError, ValueError, ImportError) as err:
        if isinstance(err, ConfigError):
            raise
        raise DataError(f"{url}: cannot read {scheme}:// tables here ({_first_line(err)})") from None
    return fs, path.rstrip("/")


def endpoint_of(storage_options: dict | None) -> str | None:
    """The S3 endpoint: `storage_options`' own, else AWS_ENDPOINT_URL_S3, else AWS_ENDPOINT_URL (as AWS's tools)."""
    if (storage_options or {}).get("endpoint"):
        return storage_options["endpoint"]
    if os.environ.get("AWS_IGNORE_CONFIGURED_ENDPOINT_URLS", "").lower() == "true":
        return None
    return os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL") or None


def _s3(options: dict, url: str) -> pafs.S3FileSystem:
    endpoint, region = endpoint_of(options), options.get("region")
    if endpoint is None and region is None and not {"AWS_REGION", "AWS_DEFAULT_REGION"} & set(os.environ):
        try:  # as pyarrow's from_uri does: AWS answers a bucket's region to anyone who asks
            region = pafs.resolve_s3_region(url.split("://", 1)[1].split("/", 1)[0])
        except (OSError, ValueError):
            region = None  # the read that follows says what is wrong
    return pafs.S3FileSystem(
        endpoint_override=endpoint,
        region=region,
        connect_timeout=CONNECT_TIMEOUT,
        retry_strategy=pafs.AwsStandardS3RetryStrategy(max_attempts=ATTEMPTS),
    )


def _gcs(options: dict) -> pafs.GcsFileSystem:
    import datetime

    endpoint, scheme = options.get("endpoint"), None
    if endpoint and "://" in endpoint:
        scheme, endpoint = endpoint.split("://", 1)
    return pafs.GcsFileSystem(
        endpoint_override=endpoint, scheme=scheme, retry_time_limit=datetime.timedelta(seconds=GCS_RETRY_SECONDS)
    )


def _other(url: str, scheme: str) -> tuple[pafs.FileSystem, str]:
    """pyarrow's filesystem for `url` (abfs[s]:// naming its account, hdfs://), else fsspec's (az://, ...)."""
    try:
        return pafs.FileSystem.from_uri(url)
    except pa.ArrowInvalid as err:
        if "Unrecognized filesystem type" not in str(err) and "ccount" not in str(err):
            raise
    import fsspec

    try:
        fs = fsspec.filesystem(scheme)
    except ImportError as err:
        raise DataError(f"{url}: reading {scheme}:// needs fsspec's package for it ({_first_line(err)})") from None
    except ValueError:
        raise DataError(f"{url}: no filesystem reads {scheme}:// here (pyarrow's nor fsspec's)") from None
    return pafs.PyFileSystem(pafs.FSSpecHandler(fs)), fs._strip_protocol(url)


def locate(url: str, storage_options: dict | None = None) -> StoredFile:
    """The file or prefix `url` names, refused in one line if the store has nothing there or cannot be asked."""
    fs, path = filesystem(url, storage_options)
    try:
        found = fs.get_file_info(path)
        if found.type == pafs.FileType.NotFound and "/" in path:  # which is missing: the bucket, or the object?
            bucket = path.split("/", 1)[0]
            if fs.get_file_info(bucket).type == pafs.FileType.NotFound:
                raise DataError(f"{url}: no such bucket {bucket!r}")
    except (pa.ArrowException, OSError) as err:
        raise DataError(_explain(url, err)) from None
    if found.type == pafs.FileType.NotFound:
        raise DataError(f"{url}: no such file or prefix")
    return StoredFile(fs, path, url, is_dir=found.type == pafs.FileType.Directory)


class StoredFile:
    """A file (or a prefix of files) in an object store: read at any offset (Parquet) or as a stream (CSV).

    Args:
        fs: The store's filesystem.
        path: The file's path in `fs`.
        url: The file as the user names it (in messages).
        is_dir: A prefix of files (a directory), not a file.
    """

    def __init__(self, fs: pafs.FileSystem, path: str, url: str, is_dir: bool = False) -> None:
        self.fs, self.path, self.url, self.is_dir = fs, path, url, is_dir
        self.version: tuple | None = None  # what the store said of the file at its first open (see `open`)
        self.footer = None  # a Parquet file's footer, once read (parquet.py): each read of it is a request

    def __str__(self) -> str:
        return self.url

    def open(self) -> pa.NativeFile:
        """The file, read at any offset (a ranged request a read); refused if it changed since its first open."""
        try:
            file = self.fs.open_input_file(self.path)
            version = self._version_of(file)
        except (pa.ArrowException, OSError) as err:
            raise DataError(_explain(self.url, err)) from None
        if self.version is None:
            self.version = version
        elif version != self.version:
            file.close()
            raise DataError(
                f"{self.url}: changed since this run first read it ({_difference(self.version, version)}); a table"
                " must stay as it is for the whole run: start again once it is written"
            )
        return file

    def stream(self) -> pa.NativeFile:
        """The file read once from start to end, decompressed as its name says (`.gz`, `.bz2`)."""
        try:
            return self.fs.open_input_stream(self.path)
        except (pa.ArrowException, OSError) as err:
            raise DataError(_explain(self.url, err)) from None

    def listing(self) -> list[StoredFile]:
        """The files under this prefix, recursively, sorted by name, hidden and `_` files skipped (as a directory)."""
        try:
            found = self.fs.get_file_info(pafs.FileSelector(self.path, recursive=True))
        except (pa.ArrowException, OSError) as err:
            raise DataError(_explain(self.url, err)) from None
        files = []
        for entry in sorted(found, key=lambda e: e.path):
            parts = PurePosixPath(entry.path).relative_to(self.path).parts
            if entry.type == pafs.FileType.File and not any(part.startswith((".", "_")) for part in parts):
                files.append(StoredFile(self.fs, entry.path, "/".join([self.url.rstrip("/"), *parts])))
        return files

    def _version_of(self, file: pa.NativeFile) -> tuple:
        """The file's size and what the store says of its version (ETag, Last-Modified), else its mtime."""
        said = {_text(k): _text(v) for k, v in (file.metadata() or {}).items()}
        version = {"size": file.size(), **{k: v for k, v in said.items() if k.lower() in ("etag", "last-modified")}}
        if len(version) == 1:
            version["mtime"] = self.fs.get_file_info(self.path).mtime_ns
        return tuple(sorted(version.items()))


def _difference(before: tuple, now: tuple) -> str:
    before, now = dict(before), dict(now)
    return ", ".join(f"{k} {before[k]} then {now.get(k)}" for k in before if before[k] != now.get(k))


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def store_error(url: str, err: Exception) -> str | None:
    """One line for what a store answered, if it is one of these: no such bucket, access denied, out of reach."""
    text, scheme = str(err), url.split("://", 1)[0].lower()
    if re.search(r"NO_SUCH_BUCKET|NoSuchBucket|bucket does not exist|ContainerNotFound", text):
        return f"{url}: no such bucket {url.split('://', 1)[-1].split('/', 1)[0]!r}"
    if "access token" in text:  # no credentials found, or their server out of reach
        where = next((v for k, v in CREDENTIALS.items() if scheme.startswith(k)), "the store's own environment")
        return f"{url}: no credentials ({_detail(text)}); they come from {where}"
    if re.search(DENIED, text):
        where = next((v for k, v in CREDENTIALS.items() if scheme.startswith(k)), "the store's own environment")
        return f"{url}: access denied ({_detail(text)}); the credentials come from {where}"
    if re.search(UNREACHABLE, text):
        return (
            f"{url}: cannot reach the store ({_detail(text)}); check the network, and the endpoint"
            " (--data.storage_options endpoint, AWS_ENDPOINT_URL)"
        )
    return None


def _explain(url: str, err: Exception) -> str:
    return store_error(url, err) or f"{url}: cannot read ({_first_line(err)})"


def _detail(text: str) -> str:
    """The store's own words, shortened: pyarrow's 'Details:' part, else its error code and operation."""
    found = re.search(r"Details: ([^\n;]+)", text) or re.search(r"AWS Error (\w+ during \w+ operation)", text)
    return (found[1] if found else text.strip().splitlines()[0]).strip()[:200]


def _first_line(err: Exception) -> str:
    return str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
