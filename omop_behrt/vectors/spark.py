"""Patient vectors computed inside Spark: partitions of (person, index date) rows mapped to vectors by executors.

:func:`embed_spark` takes a Spark DataFrame of index rows (``cohort_definition_id, subject_id, index_date``) and
an event directory every executor can read (local mode, or a shared filesystem such as /dbfs), and returns a
DataFrame with the columns of the ``patient_embedding`` export (:func:`omop_behrt.vectors.export.embedding_table`:
cohort_definition_id, subject_id, index_date, model_id, embedding as array<float>). Nothing is collected to the
driver: write the result where Spark writes (``.write.saveAsTable(...)``).

Each partition (rows repartitioned by a hash of the person, so a person's entries stay together) reads only its
persons' events, persons and periods from the event directory into a private temporary event directory and runs
:func:`omop_behrt.vectors.embed.embed_cohort` on it with fixed-shape batches (``exact=True``): a vector is then
bit for bit a function of its person alone, so the Spark vectors equal one ``embed_cohort(..., exact=True)`` run.
The model is loaded once per Python worker.
"""
from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from omop_behrt.events import EVENTS_SCHEMA, EventDir, subjects_filter, write_table

__all__ = ["embed_spark", "EMBEDDING_DDL"]

#: the Spark schema of the result: the patient_embedding export's columns (the vector as array<float>)
EMBEDDING_DDL = ("cohort_definition_id long, subject_id long, index_date date, model_id string, "
                 "embedding array<float>")
_MODELS: dict = {}      # model directory -> loaded model, per Python worker
_INDEX_TYPES = {"cohort_definition_id": "BIGINT", "subject_id": "BIGINT", "index_date": "DATE"}


def _model(model_dir: str):
    """The model at ``model_dir``, loaded once per worker process (CPU; one torch thread per task)."""
    if model_dir not in _MODELS:
        import torch
        from omop_behrt.behrt.model import Behrt
        torch.set_num_threads(1)
        _MODELS[model_dir] = Behrt.load(model_dir, device="cpu")
    return _MODELS[model_dir]


def subset_event_dir(events: EventDir, subjects: np.ndarray, folder: Path) -> EventDir:
    """An event directory at ``folder`` holding only ``subjects``' events, person rows and periods (same manifest
    and code descriptions), read with a pushed-down filter on subject_id."""
    mine = subjects_filter(subjects)
    (folder / "events").mkdir(parents=True, exist_ok=True)
    write_table(events.events().to_table(filter=mine).cast(EVENTS_SCHEMA), folder / "events" / "part-00000.parquet")
    persons = events.persons()
    write_table(persons.filter(pc.is_in(persons["subject_id"], pa.array(subjects, pa.int64()))),
                folder / "persons.parquet")
    periods = events.observation_periods()
    write_table(periods.filter(pc.is_in(periods["subject_id"], pa.array(subjects, pa.int64()))),
                folder / "observation_periods.parquet")
    for name in ("manifest.json", "codes.parquet"):
        if (events.path / name).exists():
            shutil.copy(events.path / name, folder / name)
    return EventDir.open(folder)


def _embed_partitions(events_path: str, model_dir: str, model_id: str, pooling: str, inclusive: bool,
                      fallback: bool, keep_empty: bool) -> Callable:
    """The executor side: one partition's index rows -> their vectors (see the module doc)."""
    def run(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        from omop_behrt.vectors.embed import embed_cohort
        from omop_behrt.vectors.export import embedding_table
        parts = [b for b in batches if b.num_rows]
        if not parts:
            return
        index = pa.Table.from_batches(parts).select(["cohort_definition_id", "subject_id", "index_date"])
        index = index.cast(pa.schema([("cohort_definition_id", pa.int64()), ("subject_id", pa.int64()),
                                      ("index_date", pa.date32())]))
        work = Path(tempfile.mkdtemp(prefix="omop-behrt-spark-embed-"))
        try:
            subjects = np.unique(index["subject_id"].to_numpy())
            events = subset_event_dir(EventDir.open(events_path), subjects, work / "events")
            res = embed_cohort(model_dir, events, index, pooling=pooling, inclusive=inclusive, device="cpu",
                               progress=False, model=_model(model_dir), fallback=fallback, exact=True,
                               work_dir=work / "run")
        finally:
            shutil.rmtree(work, ignore_errors=True)
        keep = res.has_history | keep_empty
        rows = embedding_table(res.index.filter(pa.array(keep)), res.vectors[keep], model_id)
        vectors = rows["embedding"].combine_chunks()
        listed = pa.ListArray.from_arrays(pa.array(np.arange(len(vectors) + 1) * vectors.type.list_size, pa.int32()),
                                          vectors.flatten())
        rows = rows.set_column(rows.schema.get_field_index("embedding"), "embedding", listed)
        yield from rows.to_batches()
    return run


def embed_spark(df_index, events_path_or_table, model_dir: str | Path, *, pooling: str = "cls",
                inclusive: bool = False, fallback: bool = True, keep_empty: bool = False,
                partitions: int | None = None):
    """Vectors for every (cohort_definition_id, subject_id, index_date) row of ``df_index``, computed by the
    executors: a Spark DataFrame with the patient_embedding columns (``EMBEDDING_DDL``).

    ``events_path_or_table``: an event directory (path or :class:`EventDir`) the executors can read.
    Rows whose person has no event before the index date are left out, as ``embed`` exports them, unless
    ``keep_empty``. ``partitions``: how many person-hash partitions (default: Spark's default parallelism).
    """
    from omop_behrt.vectors.embed import model_checksum
    events = events_path_or_table if isinstance(events_path_or_table, EventDir) else EventDir.open(
        events_path_or_table)
    model_dir = str(Path(model_dir).resolve())
    model_id = model_checksum(model_dir)
    columns = [c.lower() for c in df_index.columns]
    missing = {"cohort_definition_id", "subject_id", "index_date"} - set(columns)
    if missing:
        raise ValueError(f"the index DataFrame needs columns cohort_definition_id, subject_id, index_date; "
                         f"missing {', '.join(sorted(missing))} (columns: {', '.join(df_index.columns)})")
    # one small job before the executors start: an entry without a cohort, a person or a date (or one that is not
    # a number / a date) is bad input, named here rather than failing, or vanishing, inside a worker
    bad = df_index.where(" OR ".join(f"try_cast(`{c}` AS {t}) IS NULL" for c, t in _INDEX_TYPES.items())).limit(1)
    first = bad.collect()
    if first:
        row = first[0].asDict()
        raise ValueError(f"the index DataFrame has entries without a cohort_definition_id, subject_id or index_date "
                         f"(null, or not a number / a date), e.g. {row}; every entry needs all three")
    n = int(partitions or df_index.sparkSession.sparkContext.defaultParallelism)
    fn = _embed_partitions(str(Path(events.path).resolve()), model_dir, model_id, pooling, inclusive, fallback,
                           keep_empty)
    rows = df_index.selectExpr(*(f"CAST(`{c}` AS {t}) AS {c}" for c, t in _INDEX_TYPES.items()))
    return rows.repartition(n, "subject_id").mapInArrow(fn, EMBEDDING_DDL)
