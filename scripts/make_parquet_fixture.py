"""Writes tests/fixtures/data/conversational.parquet: two pairs in TRL's conversational format with
an explicit prompt, written by pyarrow (snappy), to test the Parquet reader on a file made by the
tool people use.

    pip install pyarrow && python3 scripts/make_parquet_fixture.py
"""

import pyarrow as pa
import pyarrow.parquet as pq

ROWS = [
    {
        "prompt": [{"role": "user", "content": "What is 2 + 2?"}],
        "chosen": [{"role": "assistant", "content": "4."}],
        "rejected": [{"role": "assistant", "content": "22."}],
    },
    {
        "prompt": [{"role": "user", "content": "Name a primary colour."}],
        "chosen": [{"role": "assistant", "content": "Blue."}],
        "rejected": [{"role": "assistant", "content": "Brown."}],
    },
]

pq.write_table(pa.Table.from_pylist(ROWS), "tests/fixtures/data/conversational.parquet", compression="snappy")
