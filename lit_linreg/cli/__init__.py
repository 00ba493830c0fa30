"""The command line and a run's life: `main.py` is the LightningCLI (`python -m lit_linreg fit ...`); beside it
what a config may not do (config_guards.py) and each option's range (constraints.py), how a failure is worded
(error_report.py), signals (signals.py), checkpoints (checkpoint*.py), the TensorBoard page (dashboard.py) and
the Trainer's profiler (profiler.py).

May import every package but `deploy`, which builds on it.
"""
