"""Loading a checkpoint safely, and refusing one that does not fit the model or cannot resume this run.

`load_checkpoint` reads tensors and primitives only (`weights_only=True`) and turns every way a file can fail
to be a checkpoint into one line; the `check_*` functions compare what it holds with the model and optimizer
this run configures, and name what differs.
"""

from __future__ import annotations

import os
import pickle
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from lit_linreg.cli.checkpoint_stamp import stamp_of
from lit_linreg.errors import CheckpointError


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
