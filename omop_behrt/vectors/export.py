"""Patient vectors out: DuckDB (FLOAT[d]), PostgreSQL (real[] / pgvector), Parquet, OHDSI cohort attributes.

Every target gets the DESIGN.md shapes: ``patient_embedding(cohort_definition_id, subject_id, index_date,
model_id, embedding)``, the registry ``embedding_model(model_id, name, dims, created_at, config, checksum)`` and
one provenance row per run in ``embedding_run``. Writes are transactional (Parquet: written aside, then
renamed) and idempotent per (model_id, cohort_definition_id): a re-run replaces, never duplicates.

Shards (``embed --shard I/N``): a shard's write replaces only the rows of its own persons (person hash mod N ==
I, :func:`omop_behrt.vectors.embed_run.in_shard`) of the (model_id, cohort_definition_id), in one transaction, so N
shards written in any order, concurrently or again, leave exactly the rows of one unsharded run; the registry
row stays one per model. An unsharded write replaces all the rows of its (model, cohort), as before.

Concurrent writers to one target serialise: Parquet under an exclusive lock file of the folder, DuckDB by its
single-writer file lock (a second process waits its turn), PostgreSQL under a transaction-scoped advisory lock
of the schema with unique keys on the vectors and the registry. :func:`check_writable` finds an unwritable
target before the vectors are computed; a write that fails (disk full, read-only) is one :class:`TargetError`
and leaves the rows that were there. The Parquet target lives in :mod:`export_parquet`, databases in
:mod:`export_database`, the PostgreSQL bulk load in :mod:`postgres_copy`.
"""
from __future__ import annotations

import datetime as dt
import json
import shutil
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from omop_behrt import lock
from omop_behrt.vectors.embed_run import Shard, in_shard, parse_shard, shard_text
from omop_behrt.db.database import SourceError, load_sql, quote
from omop_behrt.events import probe_write

#: Tables whose presence marks a schema as a CDM schema (never written to unless asked).
_CDM_MARKERS = {"person", "observation_period", "condition_occurrence", "visit_occurrence"}
#: How long a writer waits for another writer of the same target before it gives up (seconds).
LOCK_TIMEOUT = 600.0
LOCK_FILE = ".omop-behrt-export.lock"
#: The temporary table of a sharded database write: the subject ids whose rows the shard replaces.


class TargetError(OSError, ValueError):
    """The export target cannot be written (read-only, full, locked, missing privileges): one line naming it."""


@dataclass
class EmbeddingModelInfo:
    """The registry row of the model that made the vectors."""

    model_id: str
    name: str
    dims: int
    checksum: str
    config: dict = field(default_factory=dict)
    created_at: dt.datetime = field(default_factory=lambda: dt.datetime.now(dt.timezone.utc).replace(tzinfo=None))

    @classmethod
    def of_model_dir(cls, model_dir: str | Path, checksum: str, dims: int) -> "EmbeddingModelInfo":
        """The registry row of a BEHRT model directory (its metadata name, config.json, weights checksum)."""
        model_dir = Path(model_dir)
        meta = json.loads((model_dir / "metadata.json").read_text())
        return cls(model_id=checksum[:16], name=meta.get("name", model_dir.name), dims=int(dims), checksum=checksum,
                   config=json.loads((model_dir / "config.json").read_text()))

    @classmethod
    def of_text_encoder(cls, encoder, group: str, notes: str | None = None) -> "EmbeddingModelInfo":
        """The registry row of the text encoder: the language model's checksum with the serialiser version,
        grouping and notes mode (a new serialiser, or notes joined another way, is a new model_id)."""
        import hashlib

        from omop_behrt.text.serialize import SERIALIZER_VERSION
        described = encoder.describe()
        notes = notes or "none"
        checksum = hashlib.sha256(f"{described['checksum']} {SERIALIZER_VERSION} {group} notes={notes}".encode()
                                  ).hexdigest()
        return cls(model_id=checksum[:16], name=f"text:{encoder.name}", dims=encoder.dims, checksum=checksum,
                   config={"encoder": "text", **described, "group": group, "notes": notes,
                           "serializer_version": SERIALIZER_VERSION})

    def params(self) -> dict:
        """The registry row as bound values (the PostgreSQL upsert)."""
        return {"model_id": self.model_id, "name": self.name, "dims": int(self.dims), "created_at": self.created_at,
                "config": json.dumps(self.config, sort_keys=True), "checksum": self.checksum}

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
    """The rows of CDM 5.3's attribute_definition for one analysis: a name per dimension, type concept 0."""
    return pa.table({"attribute_definition_id": pa.array(np.arange(dims, dtype=np.int64) * 1000 + analysis_id),
                     "attribute_name": [f"{model_name} embedding dim {k}" for k in range(dims)],
                     "attribute_description": [f"dimension {k} of the patient embedding of model {model_name}"
                                               for k in range(dims)],
                     "attribute_type_concept_id": pa.array(np.zeros(dims, dtype=np.int64)),
                     "attribute_syntax": pa.nulls(dims, pa.string())})


def unique_entries(index: pa.Table) -> np.ndarray:
    """Row numbers keeping one row per table key (cohort_definition_id, subject_id, index date as a DATE).

    Two entries of one subject on the same day (MEDS labels at two times of a day) share the key; the later
    one (the one that saw more of the day) is kept, so the table never holds two rows for one key.
    """
    ts = index["index_date"].cast(pa.timestamp("us")).cast(pa.int64()).to_numpy(zero_copy_only=False)
    cid = index["cohort_definition_id"].cast(pa.int64()).to_numpy(zero_copy_only=False)
    sid = index["subject_id"].cast(pa.int64()).to_numpy(zero_copy_only=False)
    day = np.floor_divide(ts, 86_400_000_000)
    order = np.lexsort((ts, day, sid, cid))              # last key first: by cohort, subject, day, time
    c, s, d = cid[order], sid[order], day[order]
    last = np.ones(len(order), dtype=bool)
    last[:-1] = (c[1:] != c[:-1]) | (s[1:] != s[:-1]) | (d[1:] != d[:-1])
    return np.sort(order[last])


@dataclass
class WriteResult:
    """What a write did, for the CLI summary and the tests."""

    target: str
    rows: int
    replaced: int
    vector_type: str
    ohdsi_rows: int = 0
    run_id: str = ""
    duplicates: int = 0


def _is_parquet(target: str) -> bool:
    return "://" not in target and (target.endswith(".parquet") or not target.endswith((".duckdb", ".db")))


def write_embeddings(target: str | Path, index: pa.Table, vectors: np.ndarray, model: EmbeddingModelInfo, *,
                     schema: str | None = None, table: str = "patient_embedding",
                     model_table: str = "embedding_model", run_table: str = "embedding_run",
                     ohdsi_analysis_id: int | None = None, provenance: dict | None = None,
                     allow_cdm_schema: bool = False, lock_timeout: float = LOCK_TIMEOUT,
                     shard: Shard | str | None = None, cohort_definition_id: int | None = None) -> WriteResult:
    """Write vectors for one cohort to ``target``: a ``.parquet`` path or folder, a DuckDB file or a URL.

    ``index`` holds (cohort_definition_id, subject_id, index_date) aligned with ``vectors``' rows; all rows
    must share one cohort_definition_id. ``ohdsi_analysis_id`` (990..999) also writes cohort_attribute and
    attribute_definition for FeatureExtraction. Concurrent writers of one target wait for each other (up to
    ``lock_timeout`` seconds); the last one's rows for a (model, cohort) are what remains.

    ``shard=(i, n)``: the rows are shard i of n (each subject's person hash mod n is i, else a ValueError) and
    replace only that shard's rows of the (model, cohort); the other shards' rows stay. ``cohort_definition_id``
    names the cohort when ``index`` may be empty (a shard without entries still clears its stale rows).
    """
    shard = parse_shard(shard)
    rows = embedding_table(index, vectors, model.model_id)
    if shard is not None:
        outside = ~in_shard(rows["subject_id"].to_numpy(), shard)
        if outside.any():
            raise ValueError(f"shard {shard_text(shard)}: {int(outside.sum()):,} rows belong to other shards (e.g. "
                             f"subject_id {int(rows['subject_id'].to_numpy()[outside][0])}); embed with the same "
                             f"--shard as the write")
    keep = unique_entries(index)
    duplicates = rows.num_rows - len(keep)
    if duplicates:
        rows = rows.take(pa.array(keep))
    cids = pc.unique(rows["cohort_definition_id"]).to_pylist()
    if cohort_definition_id is not None and set(cids) <= {int(cohort_definition_id)}:
        cids = [int(cohort_definition_id)]
    if len(cids) != 1:
        raise ValueError(f"one cohort per write: got cohort_definition_ids {cids[:5]}")
    if ohdsi_analysis_id is not None and not 990 <= int(ohdsi_analysis_id) <= 999:
        raise ValueError(f"OHDSI analysis id must be in 990..999, got {ohdsi_analysis_id}")
    run_id = uuid.uuid4().hex
    prov = {"run_id": run_id, "model_id": model.model_id, "cohort_definition_id": cids[0],
            "duplicate_entries_dropped": duplicates, **(provenance or {})}
    if shard is not None:
        prov["shard"] = shard_text(shard)
    t = str(target)
    try:
        if _is_parquet(t):
            from omop_behrt.vectors.export_parquet import write_parquet
            res = write_parquet(Path(t), rows, model, prov, ohdsi_analysis_id, table, model_table, run_table,
                                lock_timeout, cid=cids[0], shard=shard)
        else:
            from omop_behrt.vectors.export_database import connect_target, duckdb_file_lock, write_database
            with duckdb_file_lock(t, lock_timeout):
                db = connect_target(t, lock_timeout)
                try:
                    res = write_database(db, rows, model, prov, schema, table, model_table, run_table,
                                          ohdsi_analysis_id, allow_cdm_schema, lock_timeout, cid=cids[0],
                                          shard=shard)
                finally:
                    db.close()
    except TargetError:
        raise
    except Exception as e:
        if not _is_io_failure(e):
            raise
        raise TargetError(f"cannot write embeddings to {_describe(t)}: {_first_line(e)}; "
                          f"the rows already there are untouched") from e
    res.duplicates = duplicates
    return res


def _describe(target: str) -> str:
    from omop_behrt.db.database import _redact
    return _redact(target)


def _first_line(e: BaseException) -> str:
    if isinstance(e, OSError) and e.strerror:
        return f"{e.strerror}" + (f" ({e.filename})" if e.filename else "")
    orig = getattr(e, "orig", None) or e
    text = str(orig).strip()
    return text.splitlines()[0] if text else type(orig).__name__


def _is_io_failure(e: BaseException) -> bool:
    """A failure of the target (disk, permissions, a read-only or lost server), not a bug in the caller."""
    if isinstance(e, OSError):
        return True
    import duckdb
    if isinstance(e, (duckdb.IOException, duckdb.TransactionException, duckdb.OutOfMemoryException,
                      duckdb.PermissionException)):
        return True
    try:
        import sqlalchemy as sa
    except ImportError:                               # pragma: no cover - sqlalchemy ships with the package
        return False
    return isinstance(e, (sa.exc.OperationalError, sa.exc.InternalError, sa.exc.ProgrammingError))


# -- before the work --------------------------------------------------------------------------------
def estimated_bytes(rows: int, dims: int, ohdsi: bool = False) -> int:
    """About how many bytes a write of ``rows`` vectors of ``dims`` needs (float32 + keys; OHDSI: 32 B a value)."""
    return rows * (dims * 4 + 40) + (rows * dims * 32 if ohdsi else 0)


def _nearest_existing(path: Path) -> Path:
    p = path.absolute()
    while not p.exists() and p != p.parent:
        p = p.parent
    return p


def _probe_folder(folder: Path, target: str, needed_bytes: int) -> None:
    """The folder (or the nearest one that exists, where the rest will be made) takes a new file and the bytes."""
    base = _nearest_existing(folder)
    if not base.is_dir():
        raise TargetError(f"cannot write embeddings to {target}: {base} is a file, not a folder")
    try:
        probe_write(base)
    except OSError as e:
        raise TargetError(f"cannot write embeddings to {target}: {e.strerror or e} (in {base})") from None
    free = shutil.disk_usage(base).free
    if needed_bytes and free < needed_bytes:
        raise TargetError(f"cannot write embeddings to {target}: about {needed_bytes / 1e6:,.0f} MB needed, "
                          f"{free / 1e6:,.0f} MB free on {base}")


def check_writable(target: str | Path, *, schema: str | None = None, table: str = "patient_embedding",
                   allow_cdm_schema: bool = False, needed_bytes: int = 0, lock_timeout: float = LOCK_TIMEOUT) -> str:
    """Fail now, with one line naming the target, if ``target`` cannot take the write (before any vectors).

    Parquet: the folder takes a probe file and has ``needed_bytes`` free (beside the files it rewrites). DuckDB:
    the file opens for writing (or its folder takes a probe). PostgreSQL: the session is not read-only and the
    role may create the schema or write its tables. Nothing is left behind. Returns the target described.
    """
    t = str(target)
    if _is_parquet(t):
        path = Path(t)
        folder = path.parent if path.suffix == ".parquet" else path
        emb = path if path.suffix == ".parquet" else folder / f"{table}.parquet"
        if emb.is_dir():
            raise TargetError(f"cannot write embeddings to {t}: {emb} is a folder, expected a Parquet file")
        rewritten = sum(f.stat().st_size for f in folder.glob("*.parquet")) if folder.is_dir() else 0
        _probe_folder(folder, t, needed_bytes + rewritten if needed_bytes else 0)
        return str(emb)
    if "://" not in t and not Path(t).exists():
        _probe_folder(Path(t).parent, t, needed_bytes)
        return t
    from omop_behrt.vectors.export_database import duckdb_file_lock
    with duckdb_file_lock(t, lock_timeout):
        return _check_database(t, schema, table, allow_cdm_schema, lock_timeout)


def _check_database(t: str, schema: str | None, table: str, allow_cdm_schema: bool, lock_timeout: float) -> str:
    from omop_behrt.vectors.export_database import connect_target, refuse_cdm_schema, target_schema
    try:
        db = connect_target(t, lock_timeout)
    except SourceError as e:
        raise TargetError(f"cannot write embeddings to {_describe(t)}: {e}") from None
    except Exception as e:
        if not _is_io_failure(e):
            raise
        raise TargetError(f"cannot write embeddings to {_describe(t)}: {_first_line(e)}") from None
    try:
        schema = target_schema(db, schema)
        refuse_cdm_schema(db, schema, allow_cdm_schema)
        if db.dialect == "postgresql":
            row = db.query(load_sql("export/target_privileges_postgresql.sql"),
                           {"schema": schema, "table": f"{quote(schema)}.{quote(table)}"}).to_pylist()[0]
            problem = ("the session is read-only (default_transaction_read_only or a standby)"
                       if row["read_only"] else
                       f"role {row['role']!r} may not create schema {schema!r}" if not row["schema_exists"]
                       and not row["can_create_schema"] else
                       f"role {row['role']!r} may not create tables in schema {schema!r}" if row["schema_exists"]
                       and not row["table_exists"] and not row["can_create_in_schema"] else
                       f"role {row['role']!r} may not insert into and delete from {schema}.{table}"
                       if row["table_exists"] and not row["can_write_table"] else None)
            if problem:
                raise TargetError(f"cannot write embeddings to {db.description}: {problem}")
        elif db.duck is not None:
            db.duck.execute("CHECKPOINT").fetchall()     # the file takes a write (a read-only one fails here)
    except TargetError:
        raise
    except Exception as e:
        if not _is_io_failure(e):
            raise
        raise TargetError(f"cannot write embeddings to {_describe(t)}: {_first_line(e)}") from None
    finally:
        db.close()
    return f"{db.description} {schema}.{table}"


# -- locks ------------------------------------------------------------------------------------------
def exclusive_lock(lock_path: Path, timeout: float = LOCK_TIMEOUT, target: str | None = None,
                   busy: str | None = None):
    """One writer of an export target at a time (:func:`omop_behrt.lock.exclusive_lock`); a TargetError after
    ``timeout`` s of waiting."""
    return lock.exclusive_lock(lock_path, timeout, busy or f"cannot write embeddings to {target or lock_path.parent}: "
                               f"another writer has held {lock_path} for {timeout:.0f} s", TargetError)
