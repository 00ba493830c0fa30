"""`python -m lit_linreg serve ARGS`: the server started while the model is resolved, side by side.

`serve` resolves the model with the whole CLI (serve_cli.py: Lightning, torch, the config's and checkpoint's
checks), which takes longer than the lean server takes to start (serve.py). Neither needs the other to begin: the
server needs only its own flags. So this launcher, which imports only the standard library until it starts the
server, reads those flags from ARGS with the CLI's defaults, checks them as the CLI does and tries the port; then
starts the resolution in a child process (resolve.py), and the server at once, in this process. The server's
inference workers wait in `setup` for the servable (the port, bound, takes no connection until one is ready, as
LitServe has it); once the child has written it and exited, this process hands it over (a file renamed into
place, which the workers read). Should the child
fail, it has printed its one-line error: the server stops, and the command exits with the child's code (2).

Where a server flag may come from elsewhere (a --config file naming one, an abbreviated flag), or with --help,
--print_config, or a flag the checks refuse, `serve` runs its two steps one after the other instead (the CLI's
`main`, serve_cli.py), which reads every flag and words every mistake as the CLI does.
"""

from __future__ import annotations

import _thread
import importlib.util
import multiprocessing
import os
import pickle
import re
import signal
import socket
import subprocess
import sys
import tempfile
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from lit_linreg.deploy.stopping import stop_gracefully, stopped
from lit_linreg.errors import ConfigError

OPTIONS = {  # the server's own flags of `serve`: type, default, help (serve_cli.py adds them to its parser)
    "host": (str, "127.0.0.1", "127.0.0.1 (this machine), 0.0.0.0 or ::"),
    "port": (int, 8000, "TCP port, 1024 to 65535"),
    "workers": (int, 1, "inference worker processes (each its own copy)"),
    "max_batch_size": (int, 64, "requests predicted together"),
    "batch_timeout": (float, 0.0, "seconds to wait for a batch to fill"),
    "max_rows": (int, 10_000, "rows one request may hold"),
}
HOSTS = ("127.0.0.1", "0.0.0.0", "::")  # LitServe's choices
NUMBERS = {int: re.compile(r"0|[1-9][0-9]*"), float: re.compile(r"[0-9]+(\.[0-9]+)?")}  # read alike by the CLI
NAMED_IN_CONFIG = re.compile(r"""(?<![\w.])["']?(?:""" + "|".join(OPTIONS) + r""")["']?\s*:""")
OWN_FLAGS = (*OPTIONS, "config", "help", "print_config")  # an abbreviation of one of these: the CLI decides


def server_options(args: list[str]) -> dict[str, Any] | None:
    """The server's settings as `serve ARGS` will read them, or None where ARGS alone do not settle them."""
    options = {name: default for name, (_, default, _) in OPTIONS.items()}
    tokens = iter(args)
    for token in tokens:
        if not token.startswith("-") or token[1:2].isdigit():
            continue  # a value of another flag (-1 too)
        flag, has_value, value = token.partition("=")
        name = flag.removeprefix("--")
        if flag in ("-c", "--config"):
            path = value if has_value else next(tokens, None)
            if path is None or _may_name_an_option(path):
                return None
        elif name in OPTIONS and flag == f"--{name}":
            kind = OPTIONS[name][0]
            value = value if has_value else next(tokens, None)
            if value is None or (kind is not str and not NUMBERS[kind].fullmatch(value)):
                return None
            options[name] = kind(value)
        elif flag == "-h" or not flag.startswith("--") or any(own.startswith(name) for own in OWN_FLAGS):
            return None  # --help, a short flag, or an abbreviation (`--po`, `--conf`)
    return options


def _may_name_an_option(path: str) -> bool:
    """Whether a --config file may set a server flag (or cannot be read here: the CLI will say why)."""
    try:
        return NAMED_IN_CONFIG.search(Path(path).read_text()) is not None
    except (OSError, UnicodeDecodeError):
        return True


def check_options(options: dict[str, Any], probe_port: bool = True) -> None:
    """Refuse, in one line each, the server settings LitServe would refuse later, or a port already taken."""
    host, port = options["host"], options["port"]
    if host not in HOSTS:
        raise ConfigError(f"--host must be 127.0.0.1, 0.0.0.0 or :: (LitServe's choices), got {host!r}")
    if not 1024 <= port <= 65535:
        raise ConfigError(f"--port must be from 1024 to 65535, got {port}")
    for name in ("workers", "max_rows", "max_batch_size"):
        if options[name] < 1:
            raise ConfigError(f"--{name} must be at least 1, got {options[name]}")
    if not options["batch_timeout"] >= 0:
        raise ConfigError(f"--batch_timeout must be >= 0 seconds, got {options['batch_timeout']}")
    if probe_port:
        _check_port_free(host, port)


def _check_port_free(host: str, port: int) -> None:
    """Refuse a port another program holds, in one line (uvicorn would log it and exit)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn binds: a closed port is free
        try:
            probe.bind((host, port))
        except OSError as err:
            raise ConfigError(f"--port {port}: cannot listen on {host}:{port} ({err.strerror}): give another") from None


def main(args: list[str]) -> int:
    """`serve ARGS`, its two steps side by side where the server's flags are settled; returns the exit code."""
    options = server_options(args)
    if options is None or importlib.util.find_spec("litserve") is None or not _accepted(options):
        from lit_linreg.cli.main import main as cli  # noqa: PLC0415  Lightning: only for the two steps in turn

        return cli(["serve", *args])
    with stop_gracefully() as stopped_by, tempfile.TemporaryDirectory(prefix="lit-linreg-serve-") as directory:
        launch = Launch(options, Path(directory), args, stopped_by)
        try:
            launch.serve()
        except KeyboardInterrupt:
            pass  # a signal, or the resolver failed, before the server was ready: its processes are ended below
        finally:
            launch.end()
    return launch.failed[0] if launch.failed else stopped(stopped_by)


def _accepted(options: dict[str, Any]) -> bool:
    try:
        check_options(options)
    except ConfigError:
        return False  # the two steps in turn refuse it, worded as the CLI words it
    return True


class Launch:
    """The resolver, started at once, and the server, started by `serve`, its workers waiting for the servable.

    Args:
        options: The server's settings, checked.
        directory: A directory of this run's own: the resolver writes the servable there, the workers read it.
        args: `serve`'s arguments, for the resolver.
        stopped_by: The signals that came (`stop_gracefully`'s).
    """

    def __init__(self, options: dict[str, Any], directory: Path, args: list[str], stopped_by: list[int]) -> None:
        self.options, self.stopped_by = options, stopped_by
        self.resolved, self.handed_over = directory / "resolved.pkl", directory / "servable.pkl"
        self.failed: list[int] = []  # the exit code of a resolver that failed
        self.lit_server: Any = None
        command = [sys.executable, "-m", "lit_linreg.deploy.resolve", str(self.resolved), *args]
        self.resolver = subprocess.Popen(command, preexec_fn=_leave_signals)

    def serve(self) -> None:
        """Start the server and serve, until a signal (or the resolver's failure) stops it."""
        from lit_linreg.deploy import serve  # noqa: PLC0415  LitServe and numpy, while the resolver imports Lightning

        self.api = serve.RegressionAPI(self.handed_over, self.options["max_batch_size"], self.options["batch_timeout"])
        self.lit_server = serve.server(self.api, self.options)
        threading.Thread(target=self._hand_over, args=(serve.serving_line,), name="hand-over", daemon=True).start()
        serve.run(self.lit_server, self.options)

    def _hand_over(self, serving_line: Callable[[Any], str]) -> None:
        """Once the resolver has ended: hand its servable to the workers, or stop the server as after Ctrl-C."""
        code = self.resolver.wait()
        if code == 0 and self.resolved.exists():
            self.api.servable = pickle.loads(self.resolved.read_bytes())  # here for the body limit and the line
            os.replace(self.resolved, self.handed_over)  # whole, at once: the workers wait for it
            print(serving_line(self.api.servable), file=sys.stderr, flush=True)
        elif not self.stopped_by:  # else killed by `end`
            if code <= 0:
                print(f"lit-linreg: error: resolving the model ended with code {code}", file=sys.stderr, flush=True)
            self.failed.append(code if code > 0 else 1)
            _thread.interrupt_main()  # `stop_gracefully`'s handler raises KeyboardInterrupt in `serve`

    def end(self) -> None:
        """End the resolver, and whatever of the server LitServe's run left when stopped before it was ready: the
        queue manager, shut down in order (it removes its socket's folder), then the workers."""
        if self.resolver.poll() is None:
            self.resolver.kill()
        self.resolver.wait()
        manager = getattr(getattr(self.lit_server, "transport_config", None), "manager", None)
        if manager is not None:
            manager.shutdown()
        for child in multiprocessing.active_children():
            child.kill()
            child.join()


def _leave_signals() -> None:
    """In the resolver: Ctrl-C and SIGTERM to the group are the server's to answer; it kills the resolver."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
