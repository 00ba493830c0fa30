"""Checkpoints that survive a kill, load safely, and are found again by `--ckpt_path last`."""

from __future__ import annotations

import io
import os
import pickle
import tempfile
from pathlib import Path
from typing import Any

import torch
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO
from lightning.pytorch.callbacks import ModelCheckpoint

from lit_linreg.errors import CheckpointError


class AtomicCheckpointIO(TorchCheckpointIO):
    """Writes each checkpoint to a temporary file beside it, fsyncs it, then renames it into place.

    A rename within one directory is atomic, so a kill at any moment leaves either the complete old
    file or the complete new one. Loading always uses `weights_only=True`: tensors and primitives only.
    """

    def save_checkpoint(self, checkpoint: dict[str, Any], path: str | os.PathLike, storage_options: Any = None) -> None:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        buffer = io.BytesIO()
        torch.save(checkpoint, buffer)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(buffer.getbuffer())
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        _fsync_dir(path.parent)  # make the rename itself durable

    def load_checkpoint(self, path: str | os.PathLike, map_location: Any = None, weights_only: bool | None = None):
        return load_checkpoint(path, map_location=map_location)


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


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
    return checkpoint


def _first_line(err: BaseException) -> str:
    return (str(err).strip().splitlines() or [type(err).__name__])[0]


def check_compatible(
    checkpoint: dict[str, Any], path: str | os.PathLike, in_features: int, out_features: int, bias: bool
) -> None:
    """Refuse a checkpoint that does not fit this model, naming what differs.

    The sizes are read from the saved weight, (out_features, in_features): the tensor that has to fit;
    the bias from whether a `linear.bias` was saved.
    """
    weight = checkpoint["state_dict"].get("linear.weight")
    if not isinstance(weight, torch.Tensor) or weight.dim() != 2:
        raise CheckpointError(f"{path}: not a lit_linreg checkpoint (its state_dict has no linear.weight matrix)")
    saved = {"in_features": weight.shape[1], "out_features": weight.shape[0]}
    differ = [
        f"{name} {saved[name]} in the checkpoint, {ours} in this data"
        for name, ours in (("in_features", in_features), ("out_features", out_features))
        if saved[name] != ours
    ]
    if differ:
        raise CheckpointError(f"{path}: trained on data of another shape: {'; '.join(differ)}")
    saved_bias = "linear.bias" in checkpoint["state_dict"]
    if saved_bias != bias:
        raise CheckpointError(
            f"{path}: model.bias is {str(saved_bias).lower()} in the checkpoint but {str(bias).lower()} here;"
            f" pass --model.bias {str(saved_bias).lower()}"
        )


def find_last(root: str | os.PathLike) -> Path:
    """The newest `last.ckpt` anywhere under a run directory (each run writes its own version folder)."""
    candidates = [p for p in Path(root).rglob("last.ckpt") if p.is_file()]
    if not candidates:
        raise CheckpointError(f"--ckpt_path last: no last.ckpt under {root}; run fit there first, or drop --ckpt_path")
    return max(candidates, key=lambda p: p.stat().st_mtime_ns)


class LastCheckpoint(ModelCheckpoint):
    """Rewrites `last.ckpt` at the end of every training epoch, whether or not the monitored metric improved.

    `ModelCheckpoint(monitor=..., save_last=True)` rewrites last.ckpt only in an epoch that also saves a
    top-k checkpoint, so a run that stops improving would resume from an old epoch. This callback keeps
    `--ckpt_path last` at most one epoch behind; the `checkpoint` group keeps the best ones.
    """

    def __init__(self) -> None:
        super().__init__(
            filename="last", monitor=None, save_top_k=1, enable_version_counter=False, save_on_train_epoch_end=True
        )
