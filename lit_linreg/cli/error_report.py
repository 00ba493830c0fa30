"""How the CLI words a failure: one line on stderr, from jsonargparse's, torch's or the system's message.

`main` in cli.py decides which failures are the user's to fix and their exit codes; the functions here find
the part of an exception that says what to change, and print it.
"""

from __future__ import annotations

import errno
import os
import re
import sys
import textwrap

import torch


def name_the_model_option(message: str, args: list[str]) -> str | None:
    """jsonargparse's error for a bad `--model` or `--model.X`, in a line naming what to change; None for others.

    With `--model` a class to choose, jsonargparse blames the class (`Parser key "model": Problem with given
    class_path ...`) for a misspelt or mistyped model option: the user wrote the option, so the message names it.
    """
    if not message.startswith('Parser key "model"'):
        return None
    if "does not correspond to a subclass of LinearRegression" in message:
        given = re.search(r"Given value: (.*)$", message)
        return f"--model {given[1] if given else ''} is not a subclass of lit_linreg.LinearRegression"
    found = re.search(r"Problem with given class_path '([\w.]+)':\n((?: {8}.*(?:\n|$))+)", message)
    if found is None:
        return None
    model_class, problem = found[1].rsplit(".", 1)[-1], textwrap.dedent(found[2])
    if not_accepted := re.fullmatch(r"Option '([\w.]+)' is not accepted", problem.strip()):
        option = not_accepted[1]
        if any(re.match(rf"--model\.(init_args\.)?{re.escape(option)}(=|$)", arg) for arg in args):
            return f"unrecognized arguments: --model.{option} (not an argument of {model_class})"
        return f"model class {model_class} does not accept option 'model.{option}'"
    return re.sub(r'^Parser key "', 'Parser key "model.', problem, count=1)


def memory_wanted(err: BaseException) -> str | None:
    """What an allocation that failed asked for ("670.6 GiB asked for"), or None if none failed.

    Sizes within int64 but past the machine (`--data.n_samples 100000000000`) fail inside torch or numpy.
    """
    if isinstance(err, MemoryError | torch.OutOfMemoryError) or "can't allocate memory" in str(err):
        asked = re.search(r"allocate (\d+) bytes", str(err))
        return f"{int(asked[1]) / 2**30:.1f} GiB asked for" if asked else type(err).__name__
    return None


# Lightning's RuntimeErrors that are a mistake in the config, found only once training runs.
LIGHTNING_CONFIG_ERRORS = ("Early stopping conditioned on metric",)


def find_os_error(err: BaseException) -> OSError | None:
    """An OSError about a file (full disk, read-only or missing directory) that `err` is or was caused by."""
    while err is not None:
        if isinstance(err, OSError) and err.errno in FILE_ERRORS:
            return err
        err = err.__cause__ or err.__context__
    return None


# Full disk or quota, no permission, read-only file system, a path through a file or a missing directory.
FILE_ERRORS = {errno.ENOSPC, errno.EDQUOT, errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOTDIR, errno.EEXIST}


def fail(err: BaseException, reason: Exception | str, code: int) -> int:
    """Print `reason` as one line on stderr and return `code`; re-raise `err` when LIT_LINREG_DEBUG is true."""
    if isinstance(err, Exception) and os.environ.get("LIT_LINREG_DEBUG", "").strip().lower() in ("1", "true", "yes"):
        raise err
    if denied := re.search(r"Importing '([\w.]+)' is not allowed", str(reason)):  # jsonargparse's import denylist
        reason = (
            f"a config may not name {denied[1]}: naming it would run code (see docs/reliability.md: a config is code)"
        )
    if missing := re.fullmatch(r"the following arguments are required: \w+\.(\w+)", str(reason).strip()):
        reason = f"no {missing[1]} given (its section is missing or null): choose one with --{missing[1]} CLASS"
    lines = [line.strip() for line in str(reason).strip().splitlines() if line.strip()]
    # jsonargparse explains a bad value of a Union-typed option (data, trainer.max_epochs, ...) by listing each
    # type it tried and dumping the value it was given: noise next to the one error that matters.
    noise = ("Does not validate against any", "Subtypes:", "Errors:", "Given value type:", "- Expected a <class 'None")
    dumped = [line for line in lines if line.startswith("Given value:") and any(c in line for c in "({[")]
    lines = [line.removeprefix("- ") for line in lines if not line.startswith(noise) and line not in dumped]
    print(f"lit-linreg: error: {' '.join(lines)}", file=sys.stderr)
    return code
