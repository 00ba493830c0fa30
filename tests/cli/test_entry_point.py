"""The process's entry point (`python -m lit_linreg`, `lit-linreg`): imports with the collector off, then freezes."""

import subprocess
import sys

from tests.conftest import ROOT, config

RUN = """
import gc, sys
sys.argv = ["lit-linreg", "fit", "--config", {toy!r}, "--trainer.max_epochs", "2", "--figure.enabled", "false",
            "--trainer.enable_progress_bar", "false", "--trainer.default_root_dir", {root!r}]
from lit_linreg.__main__ import run
code = run()
print(code, gc.isenabled(), gc.get_freeze_count())
"""


def test_a_command_freezes_what_its_imports_made_and_collects_garbage_after(tmp_path):
    code = RUN.format(toy=config("toy.yaml"), root=str(tmp_path))
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    status, enabled, frozen = done.stdout.split()[-3:]
    assert (status, enabled) == ("0", "True"), done.stderr
    assert int(frozen) > 100_000  # torch's and Lightning's objects, out of every later collection


def test_a_caller_of_main_keeps_its_own_collector(run_cli):
    import gc

    frozen = gc.get_freeze_count()
    assert run_cli("fit", "--config", config("toy.yaml"), "--trainer.max_epochs", "1", "--figure.enabled", "false") == 0
    assert gc.get_freeze_count() == frozen and gc.isenabled()  # a test, a notebook: its objects stay collectable
