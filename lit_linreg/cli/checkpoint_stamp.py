"""Which runs are one experiment: the stamp (`RunStamp`) every checkpoint carries, naming the data it trained on.

`experiment` reduces the data config to a fingerprint, so `--ckpt_path last` and `best` resume the same
experiment and never one trained on other data (see checkpoint_find.py), and a resume says which data files
changed since. The stamp also records the optimizer and its settings, so a resumed run applies the ones its
config changed, and the split the fit drew, so that `test` and `validate` refuse rows it trained or validated
on (`refuse_seen_rows`).
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import lightning as L
from lightning.pytorch.utilities import rank_zero_info

from lit_linreg.data.splits import seen_rows
from lit_linreg.errors import DataError

STAMP = "lit_linreg"  # the checkpoint key of RunStamp's record


def stamp_of(checkpoint: Mapping[str, Any]) -> dict[str, Any]:
    """RunStamp's record in a checkpoint: {} if it has none, or one that is not a mapping (not this code's)."""
    stamp = checkpoint.get(STAMP)
    return dict(stamp) if isinstance(stamp, Mapping) else {}


# DataModule arguments that leave the training rows as they are: how batches are fed, what to test or predict
# for (and every `predict_*`), the schema the CLI hands over from a checkpoint. Runs differing only in these
# are one experiment: a resume, or a predict with `last`, may change them.
NOT_TRAINING_DATA = frozenset({"batch_size", "num_workers", "pin_memory", "unknown_category", "test_path", "schema"})


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
    reads them (`parquet_files`); None if unreadable (reading the data, later, says why)."""
    from lit_linreg.tables.parquet import parquet_files  # imported on use: a run without a table needs no pyarrow

    try:
        stats = [file.stat() for file in parquet_files(Path(path))]
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


def split_of(datamodule: Any, experiment: dict[str, str]) -> dict[str, Any] | None:
    """The split a DataModule draws (its `split`, see `TableDataModule.split`), with its table's [bytes,
    modification time] from `experiment`'s contents (None if unknown); None for a DataModule without one."""
    split = getattr(datamodule, "split", None)
    if not isinstance(split, Mapping):
        return None
    try:
        contents = json.loads(experiment["contents"])
    except (KeyError, TypeError, ValueError):
        contents = {}
    return {**split, "content": contents.get(split.get("table"))}


def refuse_seen_rows(checkpoint: Mapping[str, Any], path: str, datamodule: Any, experiment: dict, stage: str) -> None:
    """Refuse a `test` or `validate` whose rows the checkpoint's fit trained or validated on, in one line.

    What the fit drew is the stamp's `split`; a checkpoint written before the stamp kept it is let through, with
    one line saying it cannot be checked. A DataModule without a `split` (synthetic data) is not checked.
    """
    now = split_of(datamodule, experiment)
    if stage not in ("test", "validate") or now is None:
        return
    stamp = stamp_of(checkpoint)
    if "split" not in stamp:
        rank_zero_info(
            f"{path}: written before checkpoints kept their split: whether its fit saw the {stage} rows is unknown"
        )
        return
    why = seen_rows(stamp["split"], now, stage) if isinstance(stamp["split"], Mapping) else None
    if why:
        raise DataError(f"{path}: {why}")


def _real_path(value: Any) -> Any:
    if isinstance(value, str | os.PathLike) and os.path.exists(value):  # a file or a Parquet directory
        return os.path.realpath(value)
    if isinstance(value, Mapping):
        return {key: _real_path(v) for key, v in value.items()}
    return value


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
            "split": split_of(trainer.datamodule, self.experiment),  # None: a DataModule without one
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
