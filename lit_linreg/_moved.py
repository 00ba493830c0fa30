"""Where the modules of the flat layout went: older configs and run directories still name them.

A saved `config.yaml` names classes by module (`lit_linreg.nets.MLP`, `lit_linreg.profiler.LeanProfiler`); each
such name is imported from its new package instead (the same module object, so classes compare equal). Only
the three names that became packages keep their old meaning by package-level exports: `lit_linreg.model`
(`LinearRegression`), `lit_linreg.callbacks` and `lit_linreg.statistics` as before.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import sys

# old module -> its module in the layered package
MOVED = {
    "lit_linreg.blocked_linear": "lit_linreg.model.blocked_linear",
    "lit_linreg.checkpoint": "lit_linreg.cli.checkpoint",
    "lit_linreg.checkpoint_find": "lit_linreg.cli.checkpoint_find",
    "lit_linreg.checkpoint_load": "lit_linreg.cli.checkpoint_load",
    "lit_linreg.checkpoint_stamp": "lit_linreg.cli.checkpoint_stamp",
    "lit_linreg.columns": "lit_linreg.tables.columns",
    "lit_linreg.config_guards": "lit_linreg.cli.config_guards",
    "lit_linreg.constraints": "lit_linreg.cli.constraints",
    "lit_linreg.convert": "lit_linreg.tables.convert",
    "lit_linreg.csvfile": "lit_linreg.tables.csvfile",
    "lit_linreg.dashboard": "lit_linreg.cli.dashboard",
    "lit_linreg.datamodules": "lit_linreg.data.datamodules",
    "lit_linreg.encoding": "lit_linreg.tables.encoding",
    "lit_linreg.error_report": "lit_linreg.cli.error_report",
    "lit_linreg.export": "lit_linreg.deploy.export",
    "lit_linreg.in_memory": "lit_linreg.data.in_memory",
    "lit_linreg.loader": "lit_linreg.data.loader",
    "lit_linreg.loading": "lit_linreg.data.loading",
    "lit_linreg.metrics": "lit_linreg.model.metrics",
    "lit_linreg.nets": "lit_linreg.model.nets",
    "lit_linreg.optim": "lit_linreg.model.optim",
    "lit_linreg.parquet": "lit_linreg.tables.parquet",
    "lit_linreg.precondition": "lit_linreg.model.precondition",
    "lit_linreg.profiler": "lit_linreg.cli.profiler",
    "lit_linreg.rows": "lit_linreg.data.rows",
    "lit_linreg.serve": "lit_linreg.deploy.serve",
    "lit_linreg.signals": "lit_linreg.cli.signals",
    "lit_linreg.splits": "lit_linreg.data.splits",
    "lit_linreg.standardize": "lit_linreg.model.standardize",
    "lit_linreg.stream": "lit_linreg.data.stream",
    "lit_linreg.streamed_table": "lit_linreg.data.streamed_table",
    "lit_linreg.table_datamodule": "lit_linreg.data.table_datamodule",
    "lit_linreg.trained": "lit_linreg.deploy.trained",
}


class _Alias(importlib.abc.Loader):
    def __init__(self, target: str) -> None:
        self.target = target

    def create_module(self, spec):  # the moved module itself, so an old name and a new one share one object
        return importlib.import_module(self.target)

    def exec_module(self, module) -> None:
        pass

    def get_code(self, fullname: str):  # `python -m lit_linreg.convert` runs the module it became as __main__
        return importlib.util.find_spec(self.target).loader.get_code(self.target)


class MovedModules(importlib.abc.MetaPathFinder):
    """Finds `lit_linreg.<old>` as the module it became."""

    def find_spec(self, fullname, path=None, target=None):
        new = MOVED.get(fullname)
        return importlib.util.spec_from_loader(fullname, _Alias(new)) if new else None


def install() -> None:
    if not any(isinstance(finder, MovedModules) for finder in sys.meta_path):
        sys.meta_path.append(MovedModules())
