"""Checkpoints that survive a kill, load safely, and are found again by `--ckpt_path last`."""

from __future__ import annotations

import io
import os
import pickle
import tempfile
import zipfile
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
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint file")
    try:
        checkpoint = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as err:
        if "weights_only" in str(err) or "Unsupported global" in str(err):
            raise CheckpointError(
                f"{path}: refused: the file needs unsafe unpickling (it holds more than tensors and primitives);"
                " load checkpoints only from sources you trust"
            ) from None
        raise CheckpointError(f"{path}: not a PyTorch checkpoint ({_first_line(err)})") from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, ValueError, OSError) as err:
        raise CheckpointError(f"{path}: not a readable checkpoint, or truncated ({_first_line(err)})") from None
    if not isinstance(checkpoint, dict) or "state_dict" not in checkpoint:
        raise CheckpointError(f"{path}: not a Lightning checkpoint (no state_dict)")
    return checkpoint


def _first_line(err: BaseException) -> str:
    return (str(err).strip().splitlines() or [type(err).__name__])[0]


def check_compatible(checkpoint: dict[str, Any], path: str | os.PathLike, in_features: int, out_features: int) -> None:
    """Refuse a checkpoint trained on data of another shape, naming the sizes that differ."""
    hparams = checkpoint.get("hyper_parameters", {})
    differ = [
        f"{name} {hparams[name]} in the checkpoint, {ours} in this data"
        for name, ours in (("in_features", in_features), ("out_features", out_features))
        if name in hparams and hparams[name] != ours
    ]
    if differ:
        raise CheckpointError(f"{path}: trained on data of another shape: {'; '.join(differ)}")


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
        super().__init__(filename="last", monitor=None, save_top_k=1, enable_version_counter=False)
