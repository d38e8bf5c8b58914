"""The Parquet export target: a folder of patient_embedding / embedding_model / OHDSI files and a run log.

Writers of one folder take turns under an exclusive lock file; each file is rewritten aside under a name no other
writer uses and renamed over the old one, so a reader sees the old or the new file, and a failed write (disk
full) leaves the old one. A shard's write (``shard=(i, n)``) drops only the rows of its own persons.
"""
from __future__ import annotations

import datetime as dt
import json
import os
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from omop_behrt.events import write_table
from omop_behrt.vectors.embed_run import Shard, in_shard
from omop_behrt.vectors.export import (LOCK_FILE, LOCK_TIMEOUT, EmbeddingModelInfo, WriteResult, attribute_definitions,
                     cohort_attribute_rows, exclusive_lock)


def folder_lock(folder: Path, timeout: float = LOCK_TIMEOUT):
    """The lock of a Parquet target folder: its embedding, registry, run log and OHDSI files move together."""
    return exclusive_lock(folder / LOCK_FILE, timeout, str(folder))


def _of_analysis(table: pa.Table, analysis_id: int) -> pa.Array:
    """Rows whose attribute_definition_id belongs to ``analysis_id`` (id % 1000)."""
    ids = table["attribute_definition_id"].combine_chunks().to_numpy()
    return pa.array(ids % 1000 == int(analysis_id))


def _replace_parquet(path: Path, new: pa.Table, keep_mask) -> int:
    """Rewrite ``path`` as its kept rows + ``new``, atomically; returns how many old rows were dropped.

    Call under :func:`folder_lock`. The new file is written aside under a name no other writer uses and renamed
    over the old one; a failed write (disk full) removes it and leaves the old file as it was.
    """
    dropped = 0
    if path.exists():
        old = pq.read_table(path)
        keep = keep_mask(old)
        dropped = old.num_rows - pc.sum(keep).as_py() if old.num_rows else 0
        new = pa.concat_tables([_conform(old.filter(keep), new.schema), new])
    write_table(new, path)
    return dropped


def _conform(old: pa.Table, schema: pa.Schema) -> pa.Table:
    """Old rows in ``schema``: a column an earlier version did not write (attribute_definition's CDM 5.3 columns)
    is filled with 0 for a concept id (no concept) and null otherwise."""
    cols = [old[f.name] if f.name in old.column_names else
            pa.array(np.zeros(old.num_rows, np.int64)) if f.name.endswith("_concept_id") else pa.nulls(old.num_rows)
            for f in schema]
    return pa.table(cols, names=schema.names).cast(schema)


def _of_shard(table: pa.Table, shard: Shard | None) -> pa.Array:
    """Rows whose subject belongs to ``shard`` (all rows for an unsharded write)."""
    return pa.array(in_shard(table["subject_id"].combine_chunks().to_numpy(zero_copy_only=False), shard)
                    if table.num_rows else np.zeros(0, dtype=bool), pa.bool_())


def write_parquet(path: Path, rows: pa.Table, model: EmbeddingModelInfo, prov: dict, analysis_id: int | None,
                  table: str, model_table: str, run_table: str, lock_timeout: float, *, cid: int,
                  shard: Shard | None = None) -> WriteResult:
    """Replace the (model, cohort)'s rows (a shard's: its persons' only) in the folder's files, under its lock."""
    folder = path.parent if path.suffix == ".parquet" else path
    emb_path = path if path.suffix == ".parquet" else folder / f"{table}.parquet"
    folder.mkdir(parents=True, exist_ok=True)
    ohdsi_rows = 0
    with folder_lock(folder, lock_timeout):
        for stale in folder.glob("*.parquet.*.tmp"):     # left by a writer that was killed: none is writing now
            stale.unlink(missing_ok=True)
        replaced = _replace_parquet(emb_path, rows, lambda old: pc.invert(pc.and_(pc.and_(
            pc.equal(old["model_id"], model.model_id), pc.equal(old["cohort_definition_id"], cid)),
            _of_shard(old, shard))))
        _replace_parquet(folder / f"{model_table}.parquet", model.row(),
                         lambda old: pc.not_equal(old["model_id"], model.model_id))
        if analysis_id is not None:
            attrs = cohort_attribute_rows(rows, int(analysis_id))
            _replace_parquet(folder / "cohort_attribute.parquet", attrs, lambda old: pc.invert(pc.and_(pc.and_(
                pc.equal(old["cohort_definition_id"], cid), _of_analysis(old, analysis_id)), _of_shard(old, shard))))
            _replace_parquet(folder / "attribute_definition.parquet",
                             attribute_definitions(rows["embedding"].type.list_size, int(analysis_id), model.name),
                             lambda old: pc.invert(_of_analysis(old, analysis_id)))
            ohdsi_rows = attrs.num_rows
        prov = dict(prov, created_at=dt.datetime.now(dt.timezone.utc).replace(tzinfo=None).isoformat(),
                    target=str(emb_path))
        with open(folder / f"{run_table}.jsonl", "a") as f:   # last: the log names only runs that landed
            f.write(json.dumps(prov, sort_keys=True, default=str) + "\n")
            f.flush()
            os.fsync(f.fileno())
    vector_type = f"fixed_size_list<float>[{rows['embedding'].type.list_size}]"
    return WriteResult(str(emb_path), rows.num_rows, replaced, vector_type, ohdsi_rows, prov["run_id"])
