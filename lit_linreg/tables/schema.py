"""A table's schema: which columns the model takes as features and targets, and the levels of its categories.

The schema (see encoding.py) names the targets, the features in the order the model takes them, and the levels
of the categorical columns; `table_schema` builds it from a table, refusing what cannot train (a missing
column, a text target, a text feature not listed as categorical) and noting the columns it leaves out.
"""

from __future__ import annotations

from collections.abc import Callable

from lit_linreg.errors import ConfigError, DataError
from lit_linreg.tables.table import Table


def table_schema(
    table: Table,
    targets: list[str],
    features: list[str] | None,
    categorical: list[str],
    missing: str,
    note: Callable[[str], None],
) -> dict:
    """The schema of `table`'s columns (see encoding.py), the categories' levels read from every row.

    Args:
        table: The training table.
        targets: Columns to predict (numbers).
        features: Input columns; every numeric column that is not a target if None.
        categorical: Text columns to one-hot encode (added to the features).
        missing: The missing-value rule the schema records.
        note: Where the one line naming the ignored columns goes.
    """
    kinds = table.kinds
    for name in [*targets, *(features or []), *categorical]:
        if name not in kinds:
            raise DataError(f"{table.path}: no column {name!r}; the columns are {', '.join(table.columns)}")
    for name in targets:
        if kinds[name] != "number":
            raise DataError(f"{table.path}: target column {name!r} holds text, not numbers")
    clash = [name for name in [*(features or []), *categorical] if name in targets]
    if clash:
        raise ConfigError(f"column {clash[0]!r} is a target: it cannot also be a feature")
    if features is None:
        features = [name for name in table.columns if kinds[name] == "number" and name not in targets]
    features = [*features, *[name for name in categorical if name not in features]]
    text = [name for name in features if kinds[name] == "text" and name not in categorical]
    if text:
        raise DataError(
            f"{table.path}: column {text[0]!r} holds text; list it in --data.categorical to one-hot encode it"
        )
    if not features:
        raise ConfigError(f"{table.path}: no feature columns: every numeric column is a target")
    ignored = [name for name in table.columns if name not in features and name not in targets]
    if ignored:
        why = {
            name: "text, not in --data.categorical" if kinds[name] == "text" else "not in --data.features"
            for name in ignored
        }
        note(f"{table.path}: ignored columns: " + "; ".join(f"{n} ({w})" for n, w in why.items()))
    # Levels come from every row of the file: a level seen only in validation still gets its column.
    levels = table.read([], categorical) if categorical else {}
    categories = {name: sorted({v for v in levels[name] if v is not None}) for name in categorical}
    for name, found in categories.items():
        if not found:
            raise DataError(f"{table.path}: categorical column {name!r} has no values")
    return {"features": features, "targets": list(targets), "categories": categories, "missing": missing}
