"""Errors a user can cause. The CLI prints them as one line and exits non-zero, without a traceback."""


class UserError(Exception):
    """Base class for mistakes in a config, a flag, a data file or a checkpoint path."""


class ConfigError(UserError, ValueError):
    """A config value of the right type but out of its allowed range."""


class DataError(UserError):
    """A data file that cannot be read as a numeric table."""


class CheckpointError(UserError):
    """A checkpoint that is missing, unreadable, unsafe, or made for data of another shape."""


class DivergenceError(UserError):
    """Training produced a non-finite loss or non-finite weights."""


def find_user_error(err: BaseException) -> UserError | None:
    """The UserError that `err` is or was directly caused by, if any.

    jsonargparse re-raises an error from a class's `__init__` (a DataModule refusing its file, say) as a
    ValueError `from` it, listing every type it tried; the cause is the message meant for the user.
    """
    seen: set[int] = set()
    while err is not None and id(err) not in seen:
        if isinstance(err, UserError):
            return err
        seen.add(id(err))
        err = err.__cause__
    return None
