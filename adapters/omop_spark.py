"""OMOP extraction on Spark: the same SQL and quarantine rules as ``adapters.omop``, the shards written by executors.

``adapters.omop.extract`` calls this module when its source is a :class:`~omop_behrt.db.spark.SparkDatabase`.
Each clinical table's query (``sql/omop/events.sql`` as Spark SQL) is repartitioned by a hash of the person, and
every partition, in its executor, gives events without a visit their rebuilt (person, day) visit, splits good rows
from quarantined ones and writes its own Parquet shards (``events/<table>-p<partition>-<n>.parquet``), its
quarantine file and its distinct visit ids, exactly as the streaming path writes them. The driver receives only
one row of counts per partition: the events never pass through it, so its memory stays flat as the CDM grows.
Persons and observation periods are written the same way into a staging folder, then joined into the single
files of the event directory by streaming their row groups (persons range-partitioned, so the file is sorted).
The output folder must be one path every executor can write (local mode, or a shared filesystem such as /dbfs).
"""
from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from omop_behrt.db.cdm import OmopCdm
from omop_behrt.events import (EVENTS_SCHEMA, OBSERVATION_PERIODS_SCHEMA, PERSONS_SCHEMA, EventDir, ShardWriter,
                               fill_rebuilt_visits, write_table)
from omop_behrt.adapters.omop_queries import (EventTable, ExtractOptions, duplicate_counts, events_sql,
                                              observation_periods_sql, persons_sql)

#: what each partition sends back to the driver: its number and its counts (JSON), nothing per person
_STATS = "partition long, stats string"
STAGING = ".spark"
#: rows per row group of the executors' staged persons and periods: the driver joins them a row group at a time,
#: so its memory for the join does not grow with a partition's persons (one row group of 1M rows before)
JOIN_BATCH_ROWS = 65_536


def partitions(db) -> int:
    """How many person-hash partitions (and so shard groups) a table is written in."""
    return int(db.partitions or db.spark.sparkContext.defaultParallelism)


def _conform(batch: pa.RecordBatch, schema: pa.Schema) -> pa.Table:
    """A batch from Spark (large strings, its column order) as ``schema`` (the streaming path's query schema)."""
    return pa.Table.from_batches([batch]).select(schema.names).cast(schema)


def _stats_batch(partition: int, stats: dict) -> pa.RecordBatch:
    return pa.RecordBatch.from_pydict({"partition": [partition], "stats": [json.dumps(stats)]})


def _partition_id() -> int:
    from pyspark import TaskContext
    return TaskContext.get().partitionId()


def _collect(df, fn: Callable, n: int, by_range: bool = False) -> list[dict]:
    """Run ``fn`` over ``n`` partitions of ``df`` (hash of subject_id, or its ranges, sorted) in the executors."""
    if by_range:
        df = df.repartitionByRange(n, "subject_id").sortWithinPartitions("subject_id")
    else:
        df = df.repartition(n, "subject_id")
    rows = df.mapInArrow(fn, _STATS).collect()
    return [json.loads(r["stats"]) for r in sorted(rows, key=lambda r: r["partition"])]


# -- events --------------------------------------------------------------------------------------------------
def _events_writer(path: str, table: str, domain: str, rows_per_shard: int) -> Callable:
    """The executor side of one table: shards, quarantine and visit ids of one partition (see the module doc)."""
    def run(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        from omop_behrt.adapters.omop import _EVENT_COLUMNS, _QUERY_SCHEMA, _count_values, _quarantine_rows
        from omop_behrt.adapters.omop_visits import _distinct
        pid = _partition_id()
        root = Path(path)
        writer = ShardWriter(root / "events", f"{table}-p{pid:05d}", EVENTS_SCHEMA, rows_per_shard)
        quarantine, visit_ids, notes = [], [], {}
        rows_in = outside = 0
        for raw in batches:
            if raw.num_rows == 0:
                continue
            batch = fill_rebuilt_visits(_conform(raw, _QUERY_SCHEMA))
            rows_in += batch.num_rows
            ok = pc.is_null(batch.column("reason"))
            good = batch if pc.all(ok).as_py() else batch.filter(ok)
            writer.write(good.select(_EVENT_COLUMNS).cast(EVENTS_SCHEMA))
            if good.num_rows < batch.num_rows:
                quarantine.append(_quarantine_rows(batch, pc.invert(ok), table))
            _count_values(good.column("time_note"), notes)
            if domain != "death":
                outside += pc.sum(good.column("outside_op")).as_py() or 0
            v = good.column("visit_id").to_numpy()
            visit_ids.append(_distinct(v if domain != "visit" else v[:0]))
        writer.close()
        quarantined = sum(q.num_rows for q in quarantine)
        if quarantined:
            write_table(pa.concat_tables(quarantine), root / f"quarantine-{table}-p{pid:05d}.parquet")
        if visit_ids:
            state = root / ".state"
            state.mkdir(exist_ok=True)
            np.save(state / f"visits-{table}-p{pid:05d}.npy", _distinct(np.concatenate(visit_ids)))
        yield _stats_batch(pid, {"rows_in": rows_in, "rows_out": writer.rows, "quarantined": quarantined,
                                 "files": [f.name for f in writer.files], "notes": notes, "outside": outside})
    return run


def remove_partial(out: EventDir, table: str) -> None:
    """What an interrupted Spark attempt at ``table`` left: its partitions' shards, quarantine and visit ids."""
    for f in (list(out.events_dir.glob(f"{table}-*.parquet*")) + list(out.path.glob(f"quarantine-{table}-p*.parquet*"))
              + list(out.path.glob(f".state/visits-{table}-p*.npy"))):
        f.unlink()


def extract_table(cdm: OmopCdm, spec: EventTable, options: ExtractOptions, out: EventDir,
                  rows_per_shard: int) -> dict:
    """One clinical table through Spark into event shards written by the executors; its manifest part."""
    remove_partial(out, spec.table)
    duplicates, shared_ids = duplicate_counts(cdm, spec) if options.check_duplicates else (0, 0)
    sql, params = events_sql(cdm, spec, options, duplicates=duplicates > 0)
    fn = _events_writer(str(out.path.resolve()), spec.table, spec.domain, rows_per_shard)
    parts = _collect(cdm.db.frame(sql, params), fn, partitions(cdm.db))
    notes: dict = {}
    for p in parts:
        for k, n in p["notes"].items():
            notes[k] = notes.get(k, 0) + n
    return {"rows_in": sum(p["rows_in"] for p in parts), "rows_out": sum(p["rows_out"] for p in parts),
            "quarantined": sum(p["quarantined"] for p in parts), "files": [f for p in parts for f in p["files"]],
            "notes": notes, "outside_observation": sum(p["outside"] for p in parts), "shared_id_rows": shared_ids}


# -- persons and observation periods -------------------------------------------------------------------------
def _rows_writer(path: str, kind: str) -> Callable:
    """The executor side of persons (``kind="person"``) or observation periods: good rows and quarantine, staged."""
    def run(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        from omop_behrt.adapters.omop import (_OP_QUERY_SCHEMA, _PERSON_QUERY_SCHEMA, _count_values,
                                              _quarantine_rows)
        pid = _partition_id()
        schema, target = ((_PERSON_QUERY_SCHEMA, PERSONS_SCHEMA) if kind == "person"
                          else (_OP_QUERY_SCHEMA, OBSERVATION_PERIODS_SCHEMA))
        rows = [_conform(b, schema) for b in batches if b.num_rows]
        table = pa.concat_tables(rows) if rows else schema.empty_table()
        ok = pc.is_null(table.column("reason"))
        good = table.filter(ok)
        notes: dict = {}
        if kind == "person":
            _count_values(good.column("birth_note"), notes)
            _count_values(good.column("death_note"), notes)
        stage = Path(path)
        if good.num_rows:
            write_table(good.select(target.names).cast(target), stage / f"{kind}-p{pid:05d}.parquet",
                        row_group_size=JOIN_BATCH_ROWS)          # the driver joins the parts a row group at a time
        bad = table.num_rows - good.num_rows
        if bad:
            write_table(_quarantine_rows(table, pc.invert(ok), kind, with_code=False),
                        stage / f"quarantine-{kind}-p{pid:05d}.parquet")
        yield _stats_batch(pid, {"rows": table.num_rows, "good": good.num_rows, "notes": notes})
    return run


@dataclass
class StagedPersons:
    """Persons and observation periods written by the executors into ``out/.spark``, not yet in place."""

    out: EventDir
    persons: int
    rows_in: int
    notes: dict = field(default_factory=dict)
    person_ids_not_found: int = 0

    @property
    def stage(self) -> Path:
        return self.out.path / STAGING

    def commit(self) -> dict:
        """Join the staged parts into persons.parquet / observation_periods.parquet (row group by row group, in
        partition order), move the quarantine parts in place; return the manifest part of "persons"."""
        _join(sorted(self.stage.glob("person-p*.parquet")), PERSONS_SCHEMA, self.out.path / "persons.parquet")
        _join(sorted(self.stage.glob("observation_period-p*.parquet")), OBSERVATION_PERIODS_SCHEMA,
              self.out.path / "observation_periods.parquet")
        for f in sorted(self.stage.glob("quarantine-*.parquet")):
            os.replace(f, self.out.path / f.name)
        self.discard()
        return {"rows_in": self.rows_in, "notes": self.notes, "person_ids_not_found": self.person_ids_not_found}

    def discard(self) -> None:
        shutil.rmtree(self.stage, ignore_errors=True)


def _join(parts: list[Path], schema: pa.Schema, target: Path) -> None:
    """Concatenate Parquet parts into one file, one row group (:data:`JOIN_BATCH_ROWS` rows) in memory at a time
    (atomic: tmp + rename); the memory the reads took goes back to the system after, not kept by Arrow's
    allocator."""
    tmp = target.with_suffix(target.suffix + ".tmp")
    with pq.ParquetWriter(tmp, schema, compression="zstd") as writer:
        if not parts:
            writer.write_table(schema.empty_table())
        for part in parts:
            f = pq.ParquetFile(part)
            for i in range(f.num_row_groups):
                writer.write_table(f.read_row_group(i).cast(schema))
    os.replace(tmp, target)
    pa.default_memory_pool().release_unused()


def stage_persons(cdm: OmopCdm, options: ExtractOptions, out: EventDir) -> StagedPersons:
    """Persons and observation periods through Spark, written by the executors into the staging folder."""
    stage = out.path / STAGING
    shutil.rmtree(stage, ignore_errors=True)
    stage.mkdir(parents=True)
    n = partitions(cdm.db)
    sql, params = persons_sql(cdm, options)
    persons_df = cdm.db.frame(sql, params)
    people = _collect(persons_df, _rows_writer(str(stage.resolve()), "person"), n, by_range=True)
    sql, params = observation_periods_sql(cdm, options)
    periods = _collect(cdm.db.frame(sql, params), _rows_writer(str(stage.resolve()), "observation_period"), n)
    notes: dict = {}
    for p in people:
        for k, v in p["notes"].items():
            notes[k] = notes.get(k, 0) + v
    missing = 0
    if options.person_ids is not None:
        from pyspark.sql import functions as F
        ids = sorted(set(int(x) for x in options.person_ids))
        found = persons_df.filter(F.col("subject_id").isin(ids)).select("subject_id").distinct().count()
        missing = len(ids) - found
    return StagedPersons(out, persons=sum(p["rows"] for p in people),
                         rows_in=sum(p["rows"] for p in people) + sum(p["rows"] for p in periods),
                         notes=notes, person_ids_not_found=missing)
