"""The DataModules and the batch path: the notebooks' toy and crop tables and synthetic data (datamodules.py),
the user's own table (table_datamodule.py), held in memory (in_memory.py, loading.py) or streamed (stream.py,
read_ahead.py, streamed_table.py), its rows (rows.py), splits (splits.py) and batches (loader.py).

May import: `lit_linreg.errors`, `lit_linreg.statistics`, `lit_linreg.tables`, `lit_linreg.model`.
Never `callbacks`, `cli` or `deploy`.
"""
