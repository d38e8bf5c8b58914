"""Embeddings into a database target (DuckDB file, PostgreSQL, any SQLAlchemy URL): one transaction per write.

The tables (embedding, model registry, run log, OHDSI cohort_attribute + attribute_definition) are created if
missing; a write replaces the (model, cohort) rows, or a shard's persons only; PostgreSQL writers serialise on an
advisory lock per schema and a unique key makes duplicates impossible. The Parquet twin is
:mod:`omop_behrt.vectors.export_parquet`; :func:`omop_behrt.vectors.export.write_embeddings` picks one.
"""
from __future__ import annotations

import datetime as dt
import json
import time
from contextlib import nullcontext
from pathlib import Path

import numpy as np
import pyarrow as pa

from omop_behrt.db.database import Database, check_identifier, load_sql, quote, render, statements
from omop_behrt.db.postgres_copy import array_literals, copy_arrow
from omop_behrt.vectors.embed_run import Shard, in_shard
from omop_behrt.vectors.export import (_CDM_MARKERS, LOCK_TIMEOUT, EmbeddingModelInfo, TargetError, WriteResult,
                                       attribute_definitions, cohort_attribute_rows, exclusive_lock)

_SHARD_SUBJECTS = "omop_behrt_shard_subjects"


def _existing_columns(tx, schema: str, table: str, wanted: pa.Table) -> pa.Table:
    """``wanted`` cut to the columns ``table`` has: an attribute_definition made by an earlier version (or by a
    site) may lack the optional ones."""
    have = {r[0].lower() for r in tx.execute(
        "SELECT column_name FROM information_schema.columns WHERE table_schema = :s AND table_name = :t",
        {"s": schema, "t": table})}
    return wanted.select([c for c in wanted.column_names if c.lower() in have]) if have else wanted


def duckdb_file_lock(target: str, timeout: float):
    """Writers of one DuckDB file take turns on ``<file>.lock`` first: two processes creating a new file at
    once would otherwise both initialise it; DuckDB's own lock then only guards against other programs."""
    if "://" in target:
        return nullcontext()
    path = Path(target)
    path.parent.mkdir(parents=True, exist_ok=True)
    return exclusive_lock(path.with_name(path.name + ".lock"), timeout, str(path))


def connect_target(target: str, timeout: float) -> Database:
    """Open a database target for writing; a DuckDB file another process writes is waited for (bounded)."""
    if "://" in target:
        return Database.connect(target, read_only=False)
    import duckdb
    path = Path(target)
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
    deadline, pause = time.monotonic() + timeout, 0.05
    while True:
        try:
            return Database(duck=duckdb.connect(str(path)), description=str(path))
        except duckdb.IOException as e:
            if "lock" not in str(e).lower():
                raise
            if time.monotonic() >= deadline:
                raise TargetError(f"cannot write embeddings to {path}: another process has held the DuckDB file "
                                  f"for {timeout:.0f} s (DuckDB allows one writing process per file)") from None
        time.sleep(pause)
        pause = min(pause * 1.5, 1.0)


def refuse_cdm_schema(db: Database, schema: str, allow: bool) -> None:
    if schema in db.schemas() and _CDM_MARKERS <= set(db.tables(schema)) and not allow:
        raise ValueError(f"schema {schema!r} of {db.description} holds a CDM ({', '.join(sorted(_CDM_MARKERS))}); "
                         f"refusing to write embeddings there without --allow-cdm-schema")


def target_schema(db: Database, schema: str | None) -> str:
    return check_identifier(schema or ("results" if db.dialect in ("duckdb", "postgresql") else
                                       db.default_schema), "schema name")


def write_database(db: Database, rows: pa.Table, model: EmbeddingModelInfo, prov: dict, schema: str | None,
                    table: str, model_table: str, run_table: str, analysis_id: int | None,
                    allow_cdm_schema: bool, lock_timeout: float = LOCK_TIMEOUT, *, cid: int,
                    shard: Shard | None = None) -> WriteResult:
    schema = target_schema(db, schema)
    refuse_cdm_schema(db, schema, allow_cdm_schema)
    dims = rows["embedding"].type.list_size
    vector_type, pgvector, postgres = f"FLOAT[{dims}]", False, db.dialect == "postgresql"
    if postgres:
        pgvector = bool(db.scalar("SELECT COUNT(*) FROM pg_extension WHERE extname = 'vector'"))
        vector_type = f"vector({dims})" if pgvector else "REAL[]"
    q = {k: db.qualify(schema, check_identifier(v, "table name")) for k, v in
         {"embedding_table": table, "model_table": model_table, "run_table": run_table,
          "cohort_attribute_table": "cohort_attribute", "attribute_definition_table": "attribute_definition"}.items()}
    q.update({"embedding_key": quote(f"{table}_key", "index name"),
              "model_key": quote(f"{model_table}_key", "index name")})
    key = {"model_id": model.model_id, "cohort_definition_id": cid}
    ohdsi_rows = 0
    with db.transaction() as tx:
        if postgres:   # one writer per schema at a time, released with the transaction (also on a crash)
            tx.execute(f"SET LOCAL lock_timeout = '{int(lock_timeout * 1000)}ms'")
            try:
                tx.execute("SELECT pg_advisory_xact_lock(hashtext(:lock_key))",
                           {"lock_key": f"omop_behrt.export {schema}"})  # the key of every version
            except Exception as e:
                if "lock timeout" not in str(e):
                    raise
                raise TargetError(f"cannot write embeddings to {db.description} {schema}: another writer has held "
                                  f"the schema's export lock for {lock_timeout:.0f} s") from None
            tx.execute("SET LOCAL lock_timeout = 0")
        tx.execute(f"CREATE SCHEMA IF NOT EXISTS {quote(schema, 'schema name')}")
        ddl = render(load_sql("export/create_embedding_tables.sql"), {**q, "vector_type": vector_type})
        for stmt in statements(ddl):
            tx.execute(stmt)
        if analysis_id is not None:
            for stmt in statements(render(load_sql("export/create_cohort_attribute_tables.sql"), q)):
                tx.execute(stmt)
        if shard is None:
            replaced = tx.execute(f"SELECT COUNT(*) FROM {q['embedding_table']} WHERE model_id = :model_id "
                                  f"AND cohort_definition_id = :cohort_definition_id", key)[0][0]
            for stmt in statements(render(load_sql("export/replace_embeddings.sql"), q)):
                tx.execute(stmt, {k: v for k, v in key.items() if f":{k}" in stmt})
        else:
            replaced = _replace_shard(tx, q, key, shard, analysis_id, postgres)
        if postgres:   # duplicates impossible even for a writer that bypassed the lock
            for stmt in statements(render(load_sql("export/unique_keys_postgresql.sql"), q)):
                tx.execute(stmt)
            copy_arrow(tx, q["embedding_table"], array_literals(rows, pgvector) if pgvector else rows)
            tx.execute(render(load_sql("export/upsert_model_postgresql.sql"), q), model.params())
        else:
            tx.insert_arrow(q["embedding_table"], rows)
            tx.insert_arrow(q["model_table"], model.row())
        tx.insert_arrow(q["run_table"], pa.table({
            "run_id": [prov["run_id"]], "model_id": [model.model_id],
            "cohort_definition_id": pa.array([cid], pa.int64()),
            "created_at": pa.array([dt.datetime.now(dt.timezone.utc).replace(tzinfo=None)], pa.timestamp("us")),
            "provenance": [json.dumps(prov, sort_keys=True, default=str)]}))
        if analysis_id is not None:
            for stmt in statements(render(load_sql("export/replace_cohort_attributes.sql"), q)):
                if shard is not None and q["cohort_attribute_table"] in stmt:
                    continue            # a shard's own attribute rows went in _replace_shard
                params = {"cohort_definition_id": cid, "analysis_id": int(analysis_id)}
                tx.execute(stmt, {k: v for k, v in params.items() if f":{k}" in stmt})
            attrs = cohort_attribute_rows(rows, int(analysis_id))
            tx.insert_arrow(q["attribute_definition_table"], _existing_columns(
                tx, schema, "attribute_definition", attribute_definitions(dims, int(analysis_id), model.name)))
            if postgres:
                copy_arrow(tx, q["cohort_attribute_table"], attrs)
            else:
                tx.insert_arrow(q["cohort_attribute_table"], attrs)
            ohdsi_rows = attrs.num_rows
    return WriteResult(f"{db.description} {schema}.{table}", rows.num_rows, replaced, vector_type, ohdsi_rows,
                       prov["run_id"])


def _replace_shard(tx, q: dict, key: dict, shard: Shard, analysis_id: int | None, postgres: bool) -> int:
    """Delete the rows of ``shard``'s persons of (model, cohort) (and their OHDSI attributes of
    ``analysis_id``) and the model's registry row; returns how many vector rows went.

    The person hash is numpy's (:func:`omop_behrt.vectors.embed_run.person_hash`, not a SQL function, so every engine
    agrees): the subject ids the table holds for the (model, cohort) are read, those of the shard go to a
    temporary table, and the deletes join it. Runs inside the write's transaction, after its lock.
    """
    where = "model_id = :model_id AND cohort_definition_id = :cohort_definition_id"
    attr_where = "cohort_definition_id = :cohort_definition_id AND MOD(attribute_definition_id, 1000) = :analysis_id"
    attr_key = {"cohort_definition_id": key["cohort_definition_id"], "analysis_id": int(analysis_id or 0)}
    held = f"SELECT subject_id FROM {q['embedding_table']} WHERE {where}"
    if analysis_id is not None:
        held += f" UNION SELECT subject_id FROM {q['cohort_attribute_table']} WHERE {attr_where}"
    listed = tx.execute(f"SELECT array_agg(DISTINCT subject_id) FROM ({held}) AS held", {**key, **attr_key}
                        if analysis_id is not None else key)[0][0]     # one row: no per-row Python
    ids = np.asarray(listed if listed is not None else [], dtype=np.int64)
    mine = pa.table({"subject_id": pa.array(ids[in_shard(ids, shard)], pa.int64())})
    tx.execute(f"CREATE TEMP TABLE {_SHARD_SUBJECTS} (subject_id BIGINT NOT NULL)"
               + (" ON COMMIT DROP" if postgres else ""))
    if postgres:
        copy_arrow(tx, _SHARD_SUBJECTS, mine)
    else:
        tx.insert_arrow(_SHARD_SUBJECTS, mine)
    ours = f"subject_id IN (SELECT subject_id FROM {_SHARD_SUBJECTS})"
    replaced = tx.execute(f"SELECT COUNT(*) FROM {q['embedding_table']} WHERE {where} AND {ours}", key)[0][0]
    tx.execute(f"DELETE FROM {q['embedding_table']} WHERE {where} AND {ours}", key)
    if analysis_id is not None:
        tx.execute(f"DELETE FROM {q['cohort_attribute_table']} WHERE {attr_where} AND {ours}", attr_key)
    tx.execute(f"DELETE FROM {q['model_table']} WHERE model_id = :model_id", {"model_id": key["model_id"]})
    if not postgres:
        tx.execute(f"DROP TABLE {_SHARD_SUBJECTS}")
    return replaced
