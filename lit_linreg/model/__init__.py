"""The LightningModule and its parts: `LinearRegression` (module.py), the design transform it composes (design.py:
raw inputs to the encoded, standardized, whitened design), the networks it carries (nets.py), its SGD (optim.py),
preconditioning (precondition.py), standardization (standardize.py), a full batch by row blocks in memory
(blocked_linear.py) or streamed (row_blocks.py), and R² (metrics.py).

May import: `lit_linreg.errors`, `lit_linreg.statistics`, `lit_linreg.tables` (the encoding a checkpoint keeps).
Never `data`, `callbacks`, `cli` or `deploy`: a model knows nothing of where its rows come from.
"""

from __future__ import annotations

from typing import Any


def __getattr__(name: str) -> Any:
    # `lit_linreg.model.LinearRegression`, the class path configs and older runs name, imported on first use
    if name == "LinearRegression":
        from lit_linreg.model.module import LinearRegression

        return LinearRegression
    raise AttributeError(f"module 'lit_linreg.model' has no attribute {name!r}")
