"""Checkpoints that survive a kill, load safely, and are found again by `--ckpt_path last` or `best`.

Every run owns a directory of its own (`claim_run_dir`), every file is written atomically (`atomic_write`),
and every checkpoint carries a stamp (`RunStamp`) naming its experiment, so `last` and `best` resume the
same experiment and never one trained on other data.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import pickle
import secrets
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.utilities import rank_zero_info

from lit_linreg.errors import CheckpointError, ConfigError, DataError
from lit_linreg.tables import _parquet_files

STAMP = "lit_linreg"  # the checkpoint key of RunStamp's record


def stamp_of(checkpoint: Mapping[str, Any]) -> dict[str, Any]:
    """RunStamp's record in a checkpoint: {} if it has none, or one that is not a mapping (not this code's)."""
    stamp = checkpoint.get(STAMP)
    return dict(stamp) if isinstance(stamp, Mapping) else {}


# DataModule arguments that leave the training rows as they are: how batches are fed, what to test or predict
# for (and every `predict_*`), the schema the CLI hands over from a checkpoint. Runs differing only in these
# are one experiment: a resume, or a predict with `last`, may change them.
NOT_TRAINING_DATA = frozenset({"batch_size", "num_workers", "pin_memory", "unknown_category", "test_path", "schema"})


def atomic_write(path: str | os.PathLike, data: bytes | memoryview) -> None:
    """Write `data` to a temporary file beside `path`, fsync it, and rename it into place.

    A rename within one directory is atomic, so a kill or a full disk at any moment leaves either the
    complete old file or the complete new one, never a part. The file gets the mode a plain `open`
    would give it (0666 less the umask), not mkstemp's 0600.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    while True:
        tmp = path.parent / f".{path.name}.{secrets.token_hex(4)}.tmp"
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
            break
        except FileExistsError:
            continue
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as err:
        tmp.unlink(missing_ok=True)
        if isinstance(err, OSError) and err.errno is not None and err.filename is None:  # write(), fsync(): name it
            err.filename = str(path)
        raise
    _fsync_dir(path.parent)  # make the rename itself durable


class AtomicCheckpointIO(TorchCheckpointIO):
    """Writes each checkpoint with `atomic_write`; loads with `weights_only=True` (tensors and primitives only)."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path: str | os.PathLike, storage_options: Any = None) -> None:
        buffer = io.BytesIO()
        torch.save(checkpoint, buffer)
        atomic_write(path, buffer.getbuffer())

    def load_checkpoint(self, path: str | os.PathLike, map_location: Any = None, weights_only: bool | None = None):
        return load_checkpoint(path, map_location=map_location)


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def claim_run_dir(parent: str | os.PathLike) -> Path:
    """Create and return `parent/version_N` for the next free N: one `mkdir`, atomic, so one run owns it.

    Lightning's loggers pick the next version by listing the folder, so two runs started at the same
    moment both chose version_0; `mkdir` fails for the second, which takes the next number instead.
    """
    parent = Path(parent)
    parent.mkdir(parents=True, exist_ok=True)
    versions = [int(p.name[8:]) for p in parent.glob("version_*") if p.name[8:].isdigit()]
    n = max(versions, default=-1) + 1
    while True:
        try:
            (parent / f"version_{n}").mkdir()
            return parent / f"version_{n}"
        except FileExistsError:
            n += 1


def load_checkpoint(path: str | os.PathLike, map_location: Any = "cpu") -> dict[str, Any]:
    """Load a checkpoint with `weights_only=True`, turning every failure into a one-line CheckpointError."""
    path = Path(path)
    if path.is_dir():
        raise CheckpointError(f"{path}: is a directory, not a checkpoint file")
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint file")
    if path.stat().st_size == 0:
        raise CheckpointError(f"{path}: the file is empty, not a checkpoint")
    try:
        checkpoint = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as err:
        # A reference to a class or function (a GLOBAL) is what weights_only refuses; anything else is not a checkpoint.
        if "GLOBAL" in str(err):
            raise CheckpointError(
                f"{path}: refused: the file needs unsafe unpickling (it holds more than tensors and primitives);"
                " load checkpoints only from sources you trust"
            ) from None
        raise CheckpointError(f"{path}: not a PyTorch checkpoint (torch.load cannot read it)") from None
    except RuntimeError as err:  # torch's zip reader: a damaged or cut-off checkpoint
        # torch's messages run to several sentences of advice: the first one is the fact.
        reason = _first_line(err).split(". ")[0]
        raise CheckpointError(f"{path}: not a readable checkpoint, or truncated ({reason})") from None
    except Exception:  # torch.load on other bytes raises almost any type (KeyError, IndexError, EOFError...)
        raise CheckpointError(f"{path}: not a PyTorch checkpoint (torch.load cannot read it)") from None
    if not isinstance(checkpoint, dict) or not isinstance(checkpoint.get("state_dict"), dict):
        raise CheckpointError(f"{path}: not a Lightning checkpoint (no state_dict)")
    if "pytorch-lightning_version" not in checkpoint:  # Lightning reads it first, with a bare KeyError
        raise CheckpointError(f"{path}: not a checkpoint written by Lightning (no pytorch-lightning_version)")
    bad = non_finite(checkpoint["state_dict"]) + non_finite(checkpoint.get("optimizer_states"), "optimizer state")
    if bad:
        raise CheckpointError(f"{path}: refused: non-finite values (NaN or inf) in {', '.join(bad[:5])}")
    return checkpoint


def non_finite(tree: Any, name: str = "") -> list[str]:
    """The names of the floating-point tensors in a nested dict/list that hold a NaN or an inf."""
    if isinstance(tree, torch.Tensor):
        return [name] if tree.is_floating_point() and not torch.isfinite(tree).all() else []
    if isinstance(tree, Mapping):
        return [bad for key, value in tree.items() for bad in non_finite(value, f"{name}.{key}" if name else str(key))]
    if isinstance(tree, list | tuple):
        return [bad for i, value in enumerate(tree) for bad in non_finite(value, f"{name}[{i}]")]
    return []


def _first_line(err: BaseException) -> str:
    return (str(err).strip().splitlines() or [type(err).__name__])[0]


def check_compatible(checkpoint: dict[str, Any], path: str | os.PathLike, model: torch.nn.Module) -> None:
    """Refuse a checkpoint that does not fit this model's network, naming what differs.

    For the default linear network the sizes are read from the saved weight, (out_features, in_features),
    and the bias from whether a `net.bias` was saved; any other network is compared tensor by tensor by
    `check_tensors`.
    """
    saved = checkpoint["state_dict"]
    ours = [name for name in model.state_dict() if name.startswith("net.")]
    if not any(name in saved for name in ours):
        raise CheckpointError(
            f"{path}: not a checkpoint of this network (its state_dict has none of {', '.join(ours[:3])})"
        )
    if not getattr(model, "is_linear", False):
        return
    weight, linear = saved.get("net.weight"), model.net
    if not isinstance(weight, torch.Tensor) or weight.dim() != 2:
        raise CheckpointError(f"{path}: not a lit_linreg checkpoint (its state_dict has no net.weight matrix)")
    differ = [
        f"{name} {theirs} in the checkpoint, {mine} in this data"
        for name, theirs, mine in (
            ("in_features", weight.shape[1], linear.in_features),
            ("out_features", weight.shape[0], linear.out_features),
        )
        if theirs != mine
    ]
    if differ:
        raise CheckpointError(f"{path}: trained on data of another shape: {'; '.join(differ)}")
    saved_bias, bias = "net.bias" in saved, linear.bias is not None
    if saved_bias != bias:
        raise CheckpointError(
            f"{path}: model.bias is {str(saved_bias).lower()} in the checkpoint but {str(bias).lower()} here;"
            f" pass --model.bias {str(saved_bias).lower()}"
        )


def check_tensors(checkpoint: dict[str, Any], path: str | os.PathLike, model: torch.nn.Module) -> None:
    """Refuse a state_dict with a tensor the model lacks, without one it has, or of another shape."""
    saved, ours = checkpoint["state_dict"], model.state_dict()
    missing, extra = sorted(ours.keys() - saved.keys()), sorted(saved.keys() - ours.keys())
    if missing or extra:
        parts = [
            f"{label} {', '.join(names)}" for label, names in (("lacks", missing), ("has an extra", extra)) if names
        ]
        raise CheckpointError(f"{path}: does not fit this model: its state_dict {' and '.join(parts)}")
    shapes = [
        f"{key} {tuple(saved[key].shape)} in the checkpoint, {tuple(ours[key].shape)} here"
        for key in ours
        if isinstance(saved[key], torch.Tensor) and saved[key].shape != ours[key].shape
    ]
    if shapes:
        raise CheckpointError(f"{path}: does not fit this model: {'; '.join(shapes)}")


def check_resumable(checkpoint: dict[str, Any], path: str | os.PathLike, optimizer: str) -> None:
    """Refuse to resume fit from weights alone, or with another optimizer than the one whose state was saved."""
    if not checkpoint.get("optimizer_states"):
        raise CheckpointError(
            f"{path}: holds weights only, no optimizer state, so fit cannot resume from it;"
            " predict, validate and test can use it"
        )
    saved = stamp_of(checkpoint).get("optimizer")
    if saved is not None and saved != optimizer:
        raise CheckpointError(
            f"{path}: was trained with the {saved} optimizer, this run configures {optimizer}: resume with"
            f" {'no --optimizer' if saved == 'SGD' else '--optimizer ' + saved}, or start a new fit"
        )


def experiment(data: Mapping[str, Any] | None) -> dict[str, str]:
    """What makes two runs one experiment: the DataModule's class and its arguments, less NOT_TRAINING_DATA.

    Returns `fingerprint` (a hash of them), `data` (a short description for messages), `arguments` (all of
    them as JSON, to name what differs when no run matches) and `contents` (the size and modification time of
    each file or directory they name, as JSON: not part of the fingerprint, but a resume says if they changed).
    A string that names an existing file counts by its real path, so `data/x.csv` and `./data/x.csv` are one
    experiment.
    """
    data = data.as_dict() if hasattr(data, "as_dict") else dict(data or {})  # a jsonargparse Namespace, nested
    args = {
        key: _real_path(value)
        for key, value in sorted(dict(data.get("init_args") or {}).items())
        if key not in NOT_TRAINING_DATA and not key.startswith("predict") and value is not None
    }
    identity = json.dumps([data.get("class_path"), args], default=str, sort_keys=True)
    shown = ", ".join(f"{key}={value}" for key, value in args.items())
    description = f"{str(data.get('class_path')).rsplit('.', 1)[-1]}({shown})"
    if len(description) > 100:
        description = description[:97] + "..."
    fingerprint = hashlib.sha256(identity.encode()).hexdigest()[:16]
    contents = {value: _content(value) for value in args.values() if isinstance(value, str) and os.path.exists(value)}
    return {"fingerprint": fingerprint, "data": description, "arguments": identity, "contents": json.dumps(contents)}


def _content(path: str) -> list[int] | None:
    """[bytes, newest modification time in ns] of a file, or of the files of a directory as a Parquet table
    reads them (`tables._parquet_files`); None if unreadable (reading the data, later, says why)."""
    try:
        stats = [file.stat() for file in _parquet_files(Path(path))]
    except (OSError, DataError):
        return None
    return [sum(s.st_size for s in stats), max(s.st_mtime_ns for s in stats)]


def changed_contents(saved: str | None, current: str) -> list[str]:
    """The paths among `experiment()["contents"]` whose size or modification time differs from `saved`'s."""
    try:
        before, now = json.loads(saved), json.loads(current)
    except (TypeError, ValueError, RecursionError):  # a stamp of an older run, or not one this code wrote
        return []
    if not isinstance(before, dict):
        return []
    return [path for path, content in now.items() if content and before.get(path) and before[path] != content]


def _differences(saved: str | None, current: str) -> str:
    """How the data arguments of a saved run differ from this run's (`experiment()["arguments"]` both); empty if
    they do not, or the saved ones are missing or unreadable."""
    try:
        (saved_class, saved_args), (class_path, args) = json.loads(saved), json.loads(current)
    except (TypeError, ValueError, RecursionError):  # a stamp of an older run, or not one this code wrote
        return ""
    if not isinstance(saved_args, dict) or not isinstance(args, dict):
        return ""
    if saved_class != class_path:
        return f"{str(saved_class).rsplit('.', 1)[-1]} (this run: {str(class_path).rsplit('.', 1)[-1]})"
    keys = [key for key in sorted({*saved_args, *args}) if saved_args.get(key) != args.get(key)]
    return ", ".join(f"{key}={saved_args.get(key)} (this run: {args.get(key)})" for key in keys)


def _real_path(value: Any) -> Any:
    if isinstance(value, str | os.PathLike) and os.path.exists(value):  # a file or a Parquet directory
        return os.path.realpath(value)
    if isinstance(value, Mapping):
        return {key: _real_path(v) for key, v in value.items()}
    return value


def find_checkpoint(root: str | os.PathLike, which: str, experiment: dict[str, str] | None = None) -> Path:
    """Resolve `--ckpt_path last` or `best` under a run directory, for `experiment` (`experiment()`'s).

    `last`: the newest `last.ckpt` of this experiment. `best`: the best checkpoint (by the `checkpoint`
    group's monitor, val/loss) that the run `last` would resume recorded, as Lightning's `best` does.
    With no `last.ckpt` of this experiment, the error says how the newest differs, or names those there.
    """
    fingerprint = (experiment or {}).get("fingerprint")
    stamped = []
    for path in Path(root).rglob("last.ckpt"):
        try:
            stamped.append((path.stat().st_mtime_ns, path, stamp_of(load_checkpoint(path))))
        except (OSError, CheckpointError):  # unreadable, or vanished since the listing: not a candidate
            continue
    if not stamped:
        raise CheckpointError(
            f"--ckpt_path {which}: no last.ckpt under {root}; run fit there first, or drop --ckpt_path"
        )
    stamped.sort(key=lambda item: item[0], reverse=True)
    matching = [(path, stamp) for _, path, stamp in stamped if stamp.get("experiment") == fingerprint]
    if not matching:
        _, newest, stamp = stamped[0]
        differ = _differences(stamp.get("arguments"), experiment["arguments"]) if experiment else ""
        if differ:
            found = f"the newest, {newest}, was trained with {differ}"
            others = f" ({len(stamped) - 1} other runs there)" if len(stamped) > 1 else ""
        else:
            found = "found " + "; ".join(f"{p} ({s.get('data', 'no experiment stamp')})" for _, p, s in stamped[:5])
            others = f" and {len(stamped) - 5} more" if len(stamped) > 5 else ""
        raise CheckpointError(
            f"--ckpt_path {which}: no run under {root} trained on this data; {found}{others}:"
            " give one with --ckpt_path PATH, or check --data"
        )
    last, stamp = matching[0]
    if which == "last":
        return last
    recorded = stamp.get("best_model_path")
    if not recorded:
        raise CheckpointError(
            f"--ckpt_path best: the run of {last} recorded no best checkpoint (it never validated);"
            " give --ckpt_path last or a path"
        )
    # Lightning records an absolute path: look for it where this root holds it first, in case the root moved.
    for best in (last.parents[2].joinpath(*Path(recorded).parts[-3:]), Path(recorded)):
        if best.is_file():
            return best
    raise CheckpointError(
        f"--ckpt_path best: the best checkpoint the run of {last} recorded, {recorded}, is gone;"
        " give --ckpt_path last or a path"
    )


def find_last(root: str | os.PathLike) -> Path:
    """The newest `last.ckpt` anywhere under a run directory, whatever its experiment."""
    candidates = [p for p in Path(root).rglob("last.ckpt") if p.is_file()]
    if not candidates:
        raise CheckpointError(f"--ckpt_path last: no last.ckpt under {root}; run fit there first, or drop --ckpt_path")
    return max(candidates, key=lambda p: p.stat().st_mtime_ns)


class RunStamp(L.Callback):
    """Stamps every checkpoint with its experiment and optimizer; on resume, applies the settings changed since.

    The stamp (`checkpoint["lit_linreg"]`, primitives only) holds the experiment's fingerprint and
    description (see `experiment`), the best checkpoint so far, the optimizer's class name and the
    settings it was configured with. Resuming fit restores the optimizer's state exactly (Adam's moments,
    SGD's momentum, a scheduler's progress); a setting configured differently from the stamp's (say
    `--model.lr 0.02`, or `--optimizer.lr` with `--optimizer Adam`) then replaces the restored one: the
    config wins, and an unchanged config resumes bit for bit.

    Args:
        experiment: `experiment(data config)`.
        optimizer: The class name of the optimizer this run configures.
        settings: Its configured param-group settings (lr, momentum, ...), primitives.
    """

    def __init__(self, experiment: dict[str, str], optimizer: str, settings: dict[str, Any]) -> None:
        self.experiment, self.optimizer, self.settings = experiment, optimizer, settings

    def on_save_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict) -> None:
        monitoring = [cb for cb in trainer.checkpoint_callbacks if getattr(cb, "monitor", None)]
        best = monitoring[0].best_model_path if monitoring else ""
        checkpoint[STAMP] = {
            "experiment": self.experiment["fingerprint"],
            "data": self.experiment["data"],
            "arguments": self.experiment["arguments"],
            "contents": self.experiment["contents"],
            "best_model_path": best or "",
            "optimizer": self.optimizer,
            "settings": self.settings,
        }

    def on_load_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict) -> None:
        if trainer.state.fn != "fit":
            return
        for path in changed_contents(stamp_of(checkpoint).get("contents"), self.experiment["contents"]):
            rank_zero_info(f"{path} changed since the checkpoint was written: the resumed run trains on it as it is")
        saved = stamp_of(checkpoint).get("settings")
        if not isinstance(saved, Mapping):  # before the stamp: the model hyperparameters set the SGD
            saved = {key: checkpoint.get("hyper_parameters", {}).get(key) for key in self.settings}
        changed = {key: value for key, value in self.settings.items() if saved.get(key) != value}
        for state in checkpoint.get("optimizer_states", []):
            for group in state.get("param_groups", []):
                # "auto" (--model.lr auto) is no value: the model's own tuning sets the new optimizer, not this.
                group.update({k: v for k, v in changed.items() if k in group and not isinstance(v, str)})


class BestCheckpoint(ModelCheckpoint):
    """ModelCheckpoint, the `checkpoint` group: the best checkpoints by the monitored metric.

    The same callback at less cost a step: its `on_train_batch_end` returns at once when neither
    `every_n_train_steps` nor `train_time_interval` is set (where ModelCheckpoint's own would reach the same
    return after reading the Trainer's state), and its `state_key` is computed once, as ModelCheckpoint's, so
    a checkpoint keeps its best-model state under the key ModelCheckpoint gives it.
    """

    @property
    def state_key(self) -> str:
        key = self.__dict__.get("_state_key")  # its settings are fixed when it is built; asked at every hook
        if key is None:
            key = self._state_key = super().state_key.replace(type(self).__qualname__, ModelCheckpoint.__qualname__, 1)
        return key

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs, batch, batch_idx) -> None:
        if self._every_n_train_steps >= 1 or self._train_time_interval is not None:
            super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)


class LastCheckpoint(ModelCheckpoint):
    """Rewrites `last.ckpt` at the end of every training epoch, and every N training steps if asked.

    `ModelCheckpoint(monitor=..., save_last=True)` rewrites last.ckpt only in an epoch that also saves a
    top-k checkpoint, so a run that stops improving would resume from an old epoch. This callback keeps
    `--ckpt_path last` at most one epoch behind, or N steps with `every_n_train_steps`; the `checkpoint`
    group keeps the best ones. A mid-epoch last.ckpt holds the training loader's position (see loader.py),
    so a run resumed from it goes on at the next batch, bit for bit.

    Args:
        every_n_train_steps: Also write last.ckpt after every this many training steps (None: at epoch ends only).
    """

    def __init__(self, every_n_train_steps: int | None = None) -> None:
        if every_n_train_steps is not None and every_n_train_steps < 1:
            raise ConfigError(f"last.every_n_train_steps must be at least 1 (or null), got {every_n_train_steps}")
        # ModelCheckpoint's own step trigger would turn its epoch-end saves off: steps are counted here instead.
        super().__init__(
            filename="last", monitor=None, save_top_k=1, enable_version_counter=False, save_on_train_epoch_end=True
        )
        self.every_n_train_steps = every_n_train_steps
        self._state_key = super().state_key

    @property
    def state_key(self) -> str:
        """ModelCheckpoint's key, computed once: its settings never change, and Lightning asks for it at every hook."""
        return self._state_key

    def written(self) -> Path | None:
        """The last.ckpt this run wrote, if it wrote one yet."""
        path = Path(self.dirpath or ".", self.filename + self.FILE_EXTENSION)
        return path if self.dirpath and path.is_file() else None

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        # A run stopped by a signal or Ctrl-C ends in one line from the CLI, saying where it can resume from.
        super().on_exception(trainer, pl_module, exception)
        exception.stopped_in = trainer.state.fn, self.written()

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs, batch, batch_idx) -> None:
        every = self.every_n_train_steps
        last_of_epoch = batch_idx + 1 >= trainer.num_training_batches  # the epoch-end save follows at once
        if every and trainer.global_step % every == 0 and not last_of_epoch and not trainer.sanity_checking:
            # A full checkpoint, said so: Lightning logs a line at every save that leaves `weights_only` unset.
            trainer.save_checkpoint(os.path.join(self.dirpath, self.filename + self.FILE_EXTENSION), weights_only=False)
