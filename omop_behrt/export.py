"""Patient vectors out: DuckDB (FLOAT[d]), PostgreSQL (real[] / pgvector), Parquet, OHDSI cohort attributes.

Every target gets the DESIGN.md shapes: ``patient_embedding(cohort_definition_id, subject_id, index_date,
model_id, embedding)``, the registry ``embedding_model(model_id, name, dims, created_at, config, checksum)`` and
one provenance row per run in ``embedding_run``. Writes are transactional (Parquet: written aside, then
renamed) and idempotent per (model_id, cohort_definition_id): a re-run replaces, never duplicates.
"""
from __future__ import annotations

import datetime as dt
import json
import os
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from .database import Database, check_identifier, load_sql, quote, render

#: Tables whose presence marks a schema as a CDM schema (never written to unless asked).
_CDM_MARKERS = {"person", "observation_period", "condition_occurrence", "visit_occurrence"}


@dataclass
class EmbeddingModelInfo:
    """The registry row of the model that made the vectors."""

    model_id: str
    name: str
    dims: int
    checksum: str
    config: dict = field(default_factory=dict)
    created_at: dt.datetime = field(default_factory=lambda: dt.datetime.now(dt.timezone.utc).replace(tzinfo=None))

    def row(self) -> pa.Table:
        return pa.table({"model_id": [self.model_id], "name": [self.name], "dims": pa.array([self.dims], pa.int32()),
                         "created_at": pa.array([self.created_at], pa.timestamp("us")),
                         "config": [json.dumps(self.config, sort_keys=True)], "checksum": [self.checksum]})


def embedding_table(index: pa.Table, vectors: np.ndarray, model_id: str) -> pa.Table:
    """The patient_embedding rows: one per index row, the vector as a fixed-size float32 list."""
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    if vectors.ndim != 2 or vectors.shape[0] != index.num_rows:
        raise ValueError(f"expected {index.num_rows} vectors as an (n, d) array, got shape {vectors.shape}")
    flat = pa.array(vectors.reshape(-1), pa.float32())
    return pa.table({
        "cohort_definition_id": index["cohort_definition_id"].cast(pa.int64()),
        "subject_id": index["subject_id"].cast(pa.int64()),
        "index_date": index["index_date"].cast(pa.timestamp("us")).cast(pa.date32()),
        "model_id": pa.array([model_id] * index.num_rows, pa.string()),
        "embedding": pa.FixedSizeListArray.from_arrays(flat, vectors.shape[1]),
    })


def cohort_attribute_rows(table: pa.Table, analysis_id: int) -> pa.Table:
    """The long OHDSI form: (cohort entry, dimension k) -> attribute_definition_id = k*1000 + analysis_id."""
    n = table.num_rows
    d = table["embedding"].type.list_size
    values = table["embedding"].combine_chunks().flatten().to_numpy()
    rep = lambda c: pa.array(np.repeat(table[c].combine_chunks().to_numpy(zero_copy_only=False), d))  # noqa: E731
    return pa.table({
        "cohort_definition_id": rep("cohort_definition_id"), "subject_id": rep("subject_id"),
        "cohort_start_date": pa.array(np.repeat(table["index_date"].cast(pa.int32()).combine_chunks().to_numpy(), d)
                                      ).cast(pa.date32()),
        "attribute_definition_id": pa.array(np.tile(np.arange(d, dtype=np.int64) * 1000 + analysis_id, n)),
        "value_as_number": pa.array(values.astype(np.float64)),
    })


def attribute_definitions(dims: int, analysis_id: int, model_name: str) -> pa.Table:
    return pa.table({"attribute_definition_id": pa.array(np.arange(dims, dtype=np.int64) * 1000 + analysis_id),
                     "attribute_name": [f"{model_name} embedding dim {k}" for k in range(dims)]})


@dataclass
class WriteResult:
    """What a write did, for the CLI summary and the tests."""

    target: str
    rows: int
    replaced: int
    vector_type: str
    ohdsi_rows: int = 0
    run_id: str = ""


def _split(sql: str) -> list[str]:
    return [s.strip() for s in sql.split(";") if s.strip()]


def write_embeddings(target: str | Path, index: pa.Table, vectors: np.ndarray, model: EmbeddingModelInfo, *,
                     schema: str | None = None, table: str = "patient_embedding",
                     model_table: str = "embedding_model", run_table: str = "embedding_run",
                     ohdsi_analysis_id: int | None = None, provenance: dict | None = None,
                     allow_cdm_schema: bool = False) -> WriteResult:
    """Write vectors for one cohort to ``target``: a ``.parquet`` path or folder, a DuckDB file or a URL.

    ``index`` holds (cohort_definition_id, subject_id, index_date) aligned with ``vectors``' rows; all rows
    must share one cohort_definition_id. ``ohdsi_analysis_id`` (990..999) also writes cohort_attribute and
    attribute_definition for FeatureExtraction.
    """
    rows = embedding_table(index, vectors, model.model_id)
    cids = pc.unique(rows["cohort_definition_id"]).to_pylist()
    if len(cids) != 1:
        raise ValueError(f"one cohort per write: got cohort_definition_ids {cids[:5]}")
    if ohdsi_analysis_id is not None and not 990 <= int(ohdsi_analysis_id) <= 999:
        raise ValueError(f"OHDSI analysis id must be in 990..999, got {ohdsi_analysis_id}")
    run_id = uuid.uuid4().hex
    prov = {"run_id": run_id, "model_id": model.model_id, "cohort_definition_id": cids[0], **(provenance or {})}
    t = str(target)
    if "://" not in t and (t.endswith(".parquet") or not t.endswith((".duckdb", ".db"))):
        return _write_parquet(Path(t), rows, model, prov, ohdsi_analysis_id, table, model_table, run_table)
    db = Database.connect(t, read_only=False)
    try:
        return _write_database(db, rows, model, prov, schema, table, model_table, run_table, ohdsi_analysis_id,
                               allow_cdm_schema)
    finally:
        db.close()


def _write_database(db: Database, rows: pa.Table, model: EmbeddingModelInfo, prov: dict, schema: str | None,
                    table: str, model_table: str, run_table: str, analysis_id: int | None,
                    allow_cdm_schema: bool) -> WriteResult:
    schema = check_identifier(schema or ("results" if db.dialect in ("duckdb", "postgresql") else
                                         db.default_schema), "schema name")
    if schema in db.schemas():
        present = set(db.tables(schema))
        if _CDM_MARKERS <= present and not allow_cdm_schema:
            raise ValueError(f"schema {schema!r} of {db.description} holds a CDM ({', '.join(sorted(_CDM_MARKERS))}); "
                             f"refusing to write embeddings there without --allow-cdm-schema")
    else:
        db.execute(f"CREATE SCHEMA IF NOT EXISTS {quote(schema, 'schema name')}")
    dims = rows["embedding"].type.list_size
    vector_type, pgvector = f"FLOAT[{dims}]", False
    if db.dialect == "postgresql":
        pgvector = bool(db.scalar("SELECT COUNT(*) FROM pg_extension WHERE extname = 'vector'"))
        vector_type = f"vector({dims})" if pgvector else "REAL[]"
    q = {k: db.qualify(schema, check_identifier(v, "table name")) for k, v in
         {"embedding_table": table, "model_table": model_table, "run_table": run_table,
          "cohort_attribute_table": "cohort_attribute", "attribute_definition_table": "attribute_definition"}.items()}
    for stmt in _split(render(load_sql("export/create_embedding_tables.sql"), {**q, "vector_type": vector_type})):
        db.execute(stmt)
    if analysis_id is not None:
        for stmt in _split(render(load_sql("export/create_cohort_attribute_tables.sql"), q)):
            db.execute(stmt)
    cid = rows["cohort_definition_id"][0].as_py()
    key = {"model_id": model.model_id, "cohort_definition_id": cid}
    insert_rows = rows
    if db.dialect == "postgresql":   # COPY text: arrays as Python lists (real[]) or '[..]' literals (vector)
        emb = rows["embedding"].combine_chunks()
        values = emb.flatten().to_numpy().reshape(-1, dims)
        col = pa.array(["[" + ",".join(map(repr, v.tolist())) + "]" for v in values]) if pgvector else \
            pa.array(values.tolist(), pa.list_(pa.float32()))
        insert_rows = rows.set_column(rows.schema.get_field_index("embedding"), "embedding", col)
    ohdsi_rows = 0
    with db.transaction() as tx:
        replaced = tx.execute(f"SELECT COUNT(*) FROM {q['embedding_table']} WHERE model_id = :model_id "
                              f"AND cohort_definition_id = :cohort_definition_id", key)[0][0]
        for stmt in _split(render(load_sql("export/replace_embeddings.sql"), q)):
            tx.execute(stmt, {k: v for k, v in key.items() if f":{k}" in stmt})
        tx.insert_arrow(q["embedding_table"], insert_rows)
        tx.insert_arrow(q["model_table"], model.row())
        tx.insert_arrow(q["run_table"], pa.table({
            "run_id": [prov["run_id"]], "model_id": [model.model_id], "cohort_definition_id": pa.array([cid], pa.int64()),
            "created_at": pa.array([dt.datetime.now(dt.timezone.utc).replace(tzinfo=None)], pa.timestamp("us")),
            "provenance": [json.dumps(prov, sort_keys=True, default=str)]}))
        if analysis_id is not None:
            for stmt in _split(render(load_sql("export/replace_cohort_attributes.sql"), q)):
                tx.execute(stmt, {k: v for k, v in {"cohort_definition_id": cid, "analysis_id": int(analysis_id)}.items()
                                  if f":{k}" in stmt})
            attrs = cohort_attribute_rows(rows, int(analysis_id))
            tx.insert_arrow(q["attribute_definition_table"], attribute_definitions(dims, int(analysis_id), model.name))
            tx.insert_arrow(q["cohort_attribute_table"], attrs)
            ohdsi_rows = attrs.num_rows
    return WriteResult(f"{db.description} {schema}.{table}", rows.num_rows, replaced, vector_type, ohdsi_rows,
                       prov["run_id"])


def _of_analysis(table: pa.Table, analysis_id: int) -> pa.Array:
    """Rows whose attribute_definition_id belongs to ``analysis_id`` (id % 1000)."""
    ids = table["attribute_definition_id"].combine_chunks().to_numpy()
    return pa.array(ids % 1000 == int(analysis_id))


def _replace_parquet(path: Path, new: pa.Table, keep_mask) -> int:
    """Rewrite ``path`` as its kept rows + ``new``, atomically; returns how many old rows were dropped."""
    dropped = 0
    if path.exists():
        old = pq.read_table(path)
        keep = keep_mask(old)
        dropped = old.num_rows - pc.sum(keep).as_py() if old.num_rows else 0
        new = pa.concat_tables([old.filter(keep).cast(new.schema), new])
    tmp = path.with_suffix(path.suffix + ".tmp")
    pq.write_table(new, tmp, compression="zstd")
    os.replace(tmp, path)
    return dropped


def _write_parquet(path: Path, rows: pa.Table, model: EmbeddingModelInfo, prov: dict, analysis_id: int | None,
                   table: str, model_table: str, run_table: str) -> WriteResult:
    folder = path.parent if path.suffix == ".parquet" else path
    emb_path = path if path.suffix == ".parquet" else folder / f"{table}.parquet"
    folder.mkdir(parents=True, exist_ok=True)
    cid = rows["cohort_definition_id"][0].as_py()
    replaced = _replace_parquet(emb_path, rows, lambda old: pc.invert(pc.and_(
        pc.equal(old["model_id"], model.model_id), pc.equal(old["cohort_definition_id"], cid))))
    _replace_parquet(folder / f"{model_table}.parquet", model.row(),
                     lambda old: pc.not_equal(old["model_id"], model.model_id))
    with open(folder / f"{run_table}.jsonl", "a") as f:
        f.write(json.dumps(prov, sort_keys=True, default=str) + "\n")
    ohdsi_rows = 0
    if analysis_id is not None:
        attrs = cohort_attribute_rows(rows, int(analysis_id))
        _replace_parquet(folder / "cohort_attribute.parquet", attrs, lambda old: pc.invert(pc.and_(
            pc.equal(old["cohort_definition_id"], cid), _of_analysis(old, analysis_id))))
        _replace_parquet(folder / "attribute_definition.parquet",
                         attribute_definitions(rows["embedding"].type.list_size, int(analysis_id), model.name),
                         lambda old: pc.invert(_of_analysis(old, analysis_id)))
        ohdsi_rows = attrs.num_rows
    return WriteResult(str(emb_path), rows.num_rows, replaced, f"fixed_size_list<float>[{rows['embedding'].type.list_size}]",
                       ohdsi_rows, prov["run_id"])
