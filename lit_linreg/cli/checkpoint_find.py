"""Finding `--ckpt_path last` and `best` under a run directory: the newest checkpoint of this experiment.

Lightning's own `last` and `best` look only in the run's version folder, which is new for every run; these
look through all of them, and match a checkpoint by its stamp (see checkpoint_stamp.py).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from lit_linreg.cli.checkpoint_load import load_checkpoint
from lit_linreg.cli.checkpoint_stamp import stamp_of
from lit_linreg.errors import CheckpointError


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
