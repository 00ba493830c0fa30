"""The package as a user gets it: a wheel that holds every module, and a toy fit that loads only what it uses."""

from __future__ import annotations

import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

from tests.conftest import ROOT, config

# Optional packages a toy fit must not load: the table reader, serving, export and the test's cross-checks.
NOT_FOR_A_TOY_FIT = ("pyarrow", "litserve", "fastapi", "uvicorn", "onnx", "onnxruntime", "statsmodels", "pandas")


def build_wheel(out: Path) -> Path:
    """`pip wheel .` without dependencies or build isolation: setuptools comes from the dev extra."""
    command = [
        sys.executable,
        "-m",
        "pip",
        "wheel",
        "--no-deps",
        "--no-build-isolation",
        "-q",
        "-w",
        str(out),
        str(ROOT),
    ]
    subprocess.run(command, check=True, capture_output=True, timeout=300)
    (wheel,) = out.glob("lit_linreg-*.whl")
    return wheel


def fresh_venv(where: Path, wheel: Path) -> Path:
    """A new virtual environment with the wheel installed; its dependencies seen through a .pth file.

    A line of a .pth file adds a directory to sys.path without processing that directory's own .pth files,
    so the checkout's editable install is invisible there: `lit_linreg` can only come from the wheel.
    """
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(where)], check=True, timeout=120)
    python = where / "bin" / "python"
    site = Path(
        subprocess.check_output(
            [python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], text=True
        ).strip()
    )
    with zipfile.ZipFile(wheel) as archive:  # a pure wheel installs by unpacking it into site-packages
        archive.extractall(site)
    (site / "dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    return python


@pytest.mark.slow  # builds a wheel and runs a fit in a new environment: about 20 s
def test_the_wheel_holds_every_module_and_a_toy_fit_from_it_loads_no_optional_package(tmp_path):
    wheel = build_wheel(tmp_path / "dist")
    shipped = set(zipfile.ZipFile(wheel).namelist())
    modules = {str(p.relative_to(ROOT)) for p in (ROOT / "lit_linreg").rglob("*.py")}
    assert {"lit_linreg/cli/main.py", "lit_linreg/statistics/solve.py", "lit_linreg/callbacks/reference.py"} <= modules
    assert sorted(modules - shipped) == []

    python = fresh_venv(tmp_path / "venv", wheel)
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    script = (
        "import sys\n"
        "from lit_linreg.cli.main import main\n"
        f"code = main(['fit', '--config', {config('toy.yaml')!r}, '--trainer.enable_progress_bar', 'false',\n"
        f"             '--trainer.default_root_dir', {str(tmp_path / 'runs')!r}])\n"
        "import lit_linreg\n"
        "print('FROM', lit_linreg.__file__)\n"
        f"print('LOADED', sorted(name for name in {NOT_FOR_A_TOY_FIT!r} if name in sys.modules))\n"
        "sys.exit(code)\n"
    )
    done = subprocess.run([python, "-c", script], cwd=outside, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert f"FROM {tmp_path / 'venv'}" in done.stdout
    assert "LOADED []" in done.stdout
    assert "y/x                      2" in done.stdout  # the notebooks' w = 2, in the end-of-fit table


def test_a_config_of_the_flat_layout_still_runs_by_its_old_module_names(run_cli, tmp_path):
    old = tmp_path / "old.yaml"
    old.write_text(
        "model:\n  net:\n    class_path: lit_linreg.nets.MLP\n  lr: 0.05\n"
        "data:\n  class_path: lit_linreg.datamodules.SyntheticDataModule\n"
        "  init_args:\n    n_samples: 512\n    n_features: 2\n"
        "trainer:\n  max_epochs: 1\n  profiler:\n    class_path: lit_linreg.profiler.LeanProfiler\n"
    )
    assert run_cli("fit", "--config", str(old)) == 0
    import lit_linreg.nets

    from lit_linreg.model import nets

    assert lit_linreg.nets is nets  # one module under both names: its classes are the same classes


def test_python_m_of_a_moved_module_runs_the_module_it_became(tmp_path):
    done = subprocess.run(
        [sys.executable, "-m", "lit_linreg.convert", str(tmp_path / "missing.csv"), str(tmp_path / "out")],
        cwd=tmp_path, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 2
    assert done.stderr.strip() == f"lit-linreg: error: {tmp_path / 'missing.csv'}: no such file"
