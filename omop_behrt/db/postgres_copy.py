"""Arrow tables into PostgreSQL through COPY, without per-row Python: binary rows built by numpy, else CSV.

The embedding tables have a fixed byte layout per row (bigint keys, a date, one model id, a real[] of d values),
so the binary COPY stream is one numpy structured array: about 6x faster to load than the text form, and exact.
"""
from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from omop_behrt.db.database import quote


def array_literals(rows: pa.Table, pgvector: bool = False) -> pa.Table:
    """The embedding column as PostgreSQL array literals ``{..}`` (or pgvector's ``[..]``), built by Arrow."""
    emb = rows["embedding"].combine_chunks()
    text = pc.cast(emb.flatten(), pa.string())
    lists = pa.FixedSizeListArray.from_arrays(text, emb.type.list_size).cast(pa.list_(pa.string()))
    joined = pc.binary_join(lists, ",")
    opening, closing = ("[", "]") if pgvector else ("{", "}")
    literal = pc.binary_join_element_wise(opening, joined, closing, "")
    return rows.set_column(rows.schema.get_field_index("embedding"), "embedding", literal)


_PG_EPOCH_DAYS = 10_957          # 2000-01-01, PostgreSQL's date zero, in days since 1970-01-01
_FLOAT4_OID = 700


def _pg_binary_fields(table: pa.Table) -> list[tuple[str, np.ndarray | bytes]] | None:
    """Each column as PostgreSQL binary COPY field bytes (big-endian), or None for a type not handled here."""
    fields = []
    for name, col in zip(table.column_names, table.columns):
        col = col.combine_chunks()
        if col.null_count:
            return None
        t = col.type
        if pa.types.is_int64(t):
            fields.append((">i8", col.to_numpy()))
        elif pa.types.is_float64(t):
            fields.append((">f8", col.to_numpy()))
        elif pa.types.is_date32(t):
            fields.append((">i4", col.cast(pa.int32()).to_numpy() - _PG_EPOCH_DAYS))
        elif pa.types.is_string(t) and len(col) and pc.count_distinct(col).as_py() == 1:
            fields.append(("str", col[0].as_py().encode()))
        elif pa.types.is_fixed_size_list(t) and pa.types.is_float32(t.value_type):
            fields.append(("float4[]", col.flatten().to_numpy().reshape(len(col), t.list_size)))
        else:
            return None
    return fields


def _pg_binary(table: pa.Table) -> bytes | None:
    """The rows in PostgreSQL's binary COPY format, built with numpy: every row has the same byte layout.

    A real[] field is (ndim 1, no nulls, element oid float4, length d, lower bound 1) then d (4, value) pairs.
    """
    fields = _pg_binary_fields(table)
    if fields is None:
        return None
    layout, values = [("n", ">i2")], {"n": len(fields)}
    for k, (kind, data) in enumerate(fields):
        if kind == "str":
            layout += [(f"l{k}", ">i4"), (f"v{k}", f"S{len(data)}")]
            values[f"l{k}"], values[f"v{k}"] = len(data), data
        elif kind == "float4[]":
            d = data.shape[1]
            layout += [(f"l{k}", ">i4"), (f"h{k}", ">i4", (5,)), (f"v{k}", [("len", ">i4"), ("x", ">f4")], (d,))]
            values[f"l{k}"], values[f"h{k}"] = 20 + 8 * d, np.array([1, 0, _FLOAT4_OID, d, 1])
            values[(f"v{k}", "len")], values[(f"v{k}", "x")] = 4, data
        else:
            layout += [(f"l{k}", ">i4"), (f"v{k}", kind)]
            values[f"l{k}"], values[f"v{k}"] = np.dtype(kind).itemsize, data
    rows = np.empty(table.num_rows, dtype=np.dtype(layout))
    for key, value in values.items():
        if isinstance(key, tuple):
            rows[key[0]][key[1]] = value
        else:
            rows[key] = value
    return b"PGCOPY\n\xff\r\n\x00" + b"\x00" * 8 + rows.tobytes() + b"\xff\xff"


def copy_arrow(tx, qualified_table: str, table: pa.Table) -> None:
    """Bulk load through COPY: binary rows built by numpy, or CSV written by Arrow (no per-row Python)."""
    import io

    import pyarrow.csv as pcsv
    cols = ", ".join(quote(c, "column name") for c in table.column_names)
    raw = tx.conn.connection.driver_connection
    with raw.cursor() as cur:
        for batch in table.to_batches(100_000):
            part = pa.Table.from_batches([batch])
            data = _pg_binary(part)
            if data is not None:
                with cur.copy(f"COPY {qualified_table} ({cols}) FROM STDIN WITH (FORMAT binary)") as cp:
                    cp.write(data)
                continue
            buf = io.BytesIO()
            pcsv.write_csv(array_literals(part) if "embedding" in part.column_names and
                           pa.types.is_fixed_size_list(part["embedding"].type) else part, buf,
                           pcsv.WriteOptions(include_header=False))
            with cur.copy(f"COPY {qualified_table} ({cols}) FROM STDIN WITH (FORMAT csv)") as cp:
                cp.write(buf.getvalue())
