"""Reading a user's table: CSV, TSV and Parquet, local or in object storage, their columns' kinds and encoding.

`table.py` opens a table and knows its columns before any row is read in full; `csvfile.py` and `parquet.py`
do what each format needs; `columns.py` says which columns are numbers and which text; `encoding.py` turns them
into the model's design (one-hot categories, filled-in missing values); `convert.py` writes a Parquet directory.

May import: `lit_linreg.errors`. pyarrow is imported here, never by a toy fit.
"""
