"""MEDS 0.4 <-> event directory, losslessly for everything the event directory keeps.

MEDS layout written: ``data/<shard>.parquet`` (each subject in one shard, rows sorted by subject_id then
time, static rows first), ``metadata/codes.parquet``, ``metadata/dataset.json``; plus, as MEDS allows,
``metadata/observation_periods.parquet`` and our manifest. Persons become MEDS events: ``MEDS_BIRTH`` and
``MEDS_DEATH`` at their dates, and static rows (null time) ``SEX/<F|M|U>`` and ``PERSON/SOURCE_ID``
(text_value = the source's person id). Our extra event columns (visit_id, domain, concept_id, end_time,
source_code, source_concept_id) ride along as MEDS's optional extra columns.
"""
from __future__ import annotations

import datetime as dt
import json
import os
import shutil
from pathlib import Path

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
import pyarrow.parquet as pq

from omop_behrt.db.database import arrow_reader, sql_literal
from omop_behrt.events import (EVENTS_SCHEMA, OBSERVATION_PERIODS_SCHEMA, EventDir, ShardWriter,
                      fill_rebuilt_visits, validate_events, validate_persons, write_json, write_table)

MEDS_VERSION = "0.4.0"
BIRTH, DEATH, SEX, SOURCE_ID = "MEDS_BIRTH", "MEDS_DEATH", "SEX/", "PERSON/SOURCE_ID"
ROWS_PER_SHARD = 5_000_000

# Domain for MEDS data written by other tools (no domain column): by code prefix, else "observation".
_PREFIX_DOMAIN = {"SNOMED": "condition", "ICD10CM": "condition", "ICD10": "condition", "ICD9CM": "condition",
                  "Read": "condition", "RxNorm": "drug", "RxNorm Extension": "drug", "ATC": "drug", "NDC": "drug",
                  "CVX": "immunization", "LOINC": "measurement", "LAB": "measurement", "CPT4": "procedure",
                  "HCPCS": "procedure", "ICD10PCS": "procedure", "ICD9Proc": "procedure", "OPCS4": "procedure",
                  "Visit": "visit"}


def to_meds(events: str | Path | EventDir, out: str | Path, dataset_name: str | None = None,
            rows_per_shard: int = ROWS_PER_SHARD, memory_limit: str | None = "2GB") -> dict:
    """Write an event directory as a MEDS dataset at ``out``; returns {subjects, rows, shards}.

    One pass: the events and the persons' rows are sorted once by DuckDB (spilling past ``memory_limit``) and
    streamed into shards of contiguous subjects, a shard closed at the first subject boundary past
    ``rows_per_shard`` rows; the codes (with the source's descriptions) are gathered on the way.
    """
    src = events if isinstance(events, EventDir) else EventDir.open(events)
    out = Path(out)
    (out / "data").mkdir(parents=True, exist_ok=True)
    (out / "metadata").mkdir(parents=True, exist_ok=True)
    for old in (out / "data").glob("*.parquet"):
        old.unlink()
    con = duckdb.connect()
    if memory_limit:
        con.execute(f"SET memory_limit = {sql_literal(memory_limit)}").fetchall()
    con.register("persons_t", src.persons())
    files = [str(f) for f in src.event_files()]
    if files:
        con.execute(f"CREATE TEMP VIEW events_t AS SELECT * FROM read_parquet([{', '.join(map(sql_literal, files))}])"
                    ).fetchall()
    else:
        con.register("events_t", EVENTS_SCHEMA.empty_table())
    extra = [f.name for f in EVENTS_SCHEMA if f.name not in ("subject_id", "time", "code", "numeric_value")]
    ev_cols = "subject_id, time, code, numeric_value, CAST(NULL AS VARCHAR) AS text_value, " + ", ".join(extra)
    null_extra = ", ".join(f"CAST(NULL AS {_duck_type(EVENTS_SCHEMA.field(c).type)}) AS {c}" for c in extra)
    person_rows = f"""
        SELECT subject_id, CAST(birth_date AS TIMESTAMP) AS time, '{BIRTH}' AS code, CAST(NULL AS FLOAT) AS numeric_value,
               CAST(NULL AS VARCHAR) AS text_value, {null_extra} FROM persons_t WHERE birth_date IS NOT NULL
        UNION ALL
        SELECT subject_id, CAST(death_date AS TIMESTAMP), '{DEATH}', NULL, NULL, {null_extra}
        FROM persons_t WHERE death_date IS NOT NULL
        UNION ALL
        SELECT subject_id, NULL, '{SEX}' || COALESCE(sex, 'U'), NULL, NULL, {null_extra} FROM persons_t
        UNION ALL
        SELECT subject_id, NULL, '{SOURCE_ID}', NULL, source_id, {null_extra} FROM persons_t WHERE source_id IS NOT NULL"""
    order = ", ".join(["subject_id", "time NULLS FIRST", "code", "numeric_value NULLS FIRST",
                       "text_value NULLS FIRST"] + [f"{c} NULLS FIRST" for c in extra])
    rel = con.sql(f"SELECT {ev_cols} FROM events_t UNION ALL {person_rows} ORDER BY {order}")
    writer = _MedsShards(out / "data", _meds_schema(), rows_per_shard)
    for batch in arrow_reader(rel, batch_rows=min(rows_per_shard, 1_000_000)):
        writer.write(batch)
    writer.close()
    con.register("codes_t", pa.table({"code": pa.array(sorted(writer.codes), pa.string())}))
    con.register("descriptions_t", src.descriptions().select(["code", "description"]))
    codes = con.sql("SELECT c.code, d.description, CAST([] AS VARCHAR[]) AS parent_codes FROM codes_t c LEFT JOIN "
                    "(SELECT code, MIN(description) AS description FROM descriptions_t GROUP BY code) d USING (code) "
                    "ORDER BY c.code").to_arrow_table()
    write_table(codes.cast(CODES_SCHEMA), out / "metadata" / "codes.parquet")
    from omop_behrt import __version__
    write_json({"dataset_name": dataset_name or src.path.name, "dataset_version": src.manifest.get("created_at", "1"),
                "etl_name": "omop-behrt", "etl_version": __version__, "meds_version": MEDS_VERSION,
                "created_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")},
               out / "metadata" / "dataset.json")
    write_table(src.observation_periods(), out / "metadata" / "observation_periods.parquet")
    write_json(src.manifest, out / "metadata" / "omop_behrt_manifest.json")
    return {"subjects": writer.subjects, "rows": writer.rows, "shards": len(writer.files)}


CODES_SCHEMA = pa.schema([("code", pa.string()), ("description", pa.string()),
                          ("parent_codes", pa.list_(pa.string()))])


class _MedsShards:
    """Sorted MEDS rows -> ``<i>.parquet`` shards of whole subjects; counts rows, subjects and distinct codes."""

    def __init__(self, directory: Path, schema: pa.Schema, rows_per_shard: int):
        self.directory, self.schema, self.rows_per_shard = directory, schema, rows_per_shard
        self.files: list[Path] = []
        self.rows = self.subjects = 0
        self.codes: set[str] = set()
        self._writer: pq.ParquetWriter | None = None
        self._in_shard = 0
        self._last: int | None = None           # the last subject seen (counting subjects across batches)
        self._last_written: int | None = None   # the last subject written to the open shard

    def write(self, batch: pa.RecordBatch) -> None:
        if batch.num_rows == 0:
            return
        subject = batch.column("subject_id").to_numpy()
        starts = np.flatnonzero(np.diff(subject)) + 1           # first row of each subject after the first
        self.subjects += len(starts) + int(self._last != subject[0])
        self._last = int(subject[-1])
        self.codes.update(pc.unique(batch.column("code")).to_pylist())
        table = pa.Table.from_batches([batch]).cast(self.schema)
        while table.num_rows:
            if self._writer is None:
                self._open()
            room = self.rows_per_shard - self._in_shard
            if room > 0:                                  # fill the shard up to its size
                self._put(table.slice(0, room))
                table = table.slice(room)
                continue
            # full: finish the last subject written (rows sorted by subject), then close the shard
            same = int(np.searchsorted(table.column("subject_id").to_numpy(), self._last_written, side="right"))
            if same:
                self._put(table.slice(0, same))
                table = table.slice(same)
            if table.num_rows:
                self._close()

    def _open(self) -> None:
        final = self.directory / f"{len(self.files)}.parquet"
        self._tmp = final.with_suffix(".parquet.tmp")
        self._writer = pq.ParquetWriter(self._tmp, self.schema, compression="zstd")
        self.files.append(final)
        self._in_shard = 0

    def _put(self, table: pa.Table) -> None:
        if table.num_rows == 0:
            return
        self._writer.write_table(table)
        self._in_shard += table.num_rows
        self.rows += table.num_rows
        self._last_written = int(table.column("subject_id")[-1].as_py())

    def _close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            os.replace(self._tmp, self.files[-1])
            self._writer = None

    def close(self) -> None:
        if self._writer is None and not self.files:      # no rows: one empty shard, as MEDS readers expect
            self._open()
        self._close()


def from_meds(meds: str | Path, out: str | Path, rows_per_shard: int = ROWS_PER_SHARD) -> EventDir:
    """Read a MEDS dataset (ours or another tool's) into an event directory at ``out``."""
    meds, out = Path(meds), Path(out)
    files = sorted((meds / "data").rglob("*.parquet"))
    if not files:
        raise FileNotFoundError(f"{meds} is not a MEDS dataset: no {meds}/data/**/*.parquet")
    con = duckdb.connect()
    con.register("m", ds.dataset([str(f) for f in files], format="parquet"))
    cols = {r[0] for r in con.execute("DESCRIBE m").fetchall()}
    for need in ("subject_id", "time", "code"):
        if need not in cols:
            raise ValueError(f"{meds}/data: MEDS column {need!r} is missing; columns present: {sorted(cols)}")
    text = "text_value" if "text_value" in cols else "CAST(NULL AS VARCHAR)"
    persons = con.sql(f"""
        SELECT subject_id,
               CAST(MIN(time) FILTER (WHERE code = '{BIRTH}') AS DATE) AS birth_date,
               COALESCE(MIN(CASE WHEN regexp_matches(code, '^(SEX|GENDER)/+[FfMmUu]')
                                 THEN upper(regexp_extract(code, '^(SEX|GENDER)/+(.)', 2)) END), 'U') AS sex,
               CAST(MIN(time) FILTER (WHERE code = '{DEATH}') AS DATE) AS death_date,
               MIN({text}) FILTER (WHERE code = '{SOURCE_ID}') AS source_id
        FROM m GROUP BY subject_id ORDER BY subject_id""").to_arrow_table()
    persons = validate_persons(persons, f"{meds} persons")
    def pick(name: str, default: str) -> str:
        return name if name in cols else default
    prefix_case = " ".join(f"WHEN split_part(code, '/', 1) = '{p}' THEN '{d}'" for p, d in _PREFIX_DOMAIN.items())
    domain = (f"COALESCE(domain, CASE {prefix_case} ELSE 'observation' END)" if "domain" in cols
              else f"CASE {prefix_case} ELSE 'observation' END")
    query = f"""
        SELECT subject_id, time,
               CASE WHEN regexp_matches(code, '^[^/\\s]+/.+') THEN code ELSE 'MEDS/' || code END AS code,
               CAST({pick('numeric_value', 'NULL')} AS FLOAT) AS numeric_value,
               CAST({pick('visit_id', 'NULL')} AS BIGINT) AS visit_id, {domain} AS domain,
               CAST({pick('concept_id', 'NULL')} AS BIGINT) AS concept_id,
               CAST({pick('end_time', 'NULL')} AS TIMESTAMP) AS end_time,
               CAST({pick('source_code', 'NULL')} AS VARCHAR) AS source_code,
               CAST({pick('source_concept_id', 'NULL')} AS BIGINT) AS source_concept_id
        FROM m
        WHERE code NOT IN ('{BIRTH}', '{DEATH}', '{SOURCE_ID}')
          AND NOT regexp_matches(code, '^(SEX|GENDER)/+')"""
    d = EventDir(out)
    d.path.mkdir(parents=True, exist_ok=True)
    if d.events_dir.exists():
        shutil.rmtree(d.events_dir)
    writer = ShardWriter(d.events_dir, "meds", EVENTS_SCHEMA, rows_per_shard)
    for batch in arrow_reader(con.sql(query)):
        writer.write(validate_events(pa.Table.from_batches([fill_rebuilt_visits(batch)]), f"{meds}/data"))
    writer.close()
    write_table(persons, d.path / "persons.parquet")
    ops = meds / "metadata" / "observation_periods.parquet"
    if ops.exists():
        import pyarrow.parquet as pq
        write_table(pq.read_table(ops).cast(OBSERVATION_PERIODS_SCHEMA), d.path / "observation_periods.parquet")
    manifest_path = meds / "metadata" / "omop_behrt_manifest.json"
    d.manifest = json.loads(manifest_path.read_text()) if manifest_path.exists() else {}
    d.manifest.update({"adapter": "meds", "meds_source": str(meds), "events": writer.rows,
                       "persons": persons.num_rows})
    d.write_manifest()
    return d


def _meds_schema() -> pa.Schema:
    head = [pa.field("subject_id", pa.int64(), nullable=False), pa.field("time", pa.timestamp("us")),
            pa.field("code", pa.string(), nullable=False), pa.field("numeric_value", pa.float32()),
            pa.field("text_value", pa.large_string())]  # meds.DataSchema: large_string, not string
    rest = [pa.field(f.name, f.type) for f in EVENTS_SCHEMA if f.name not in ("subject_id", "time", "code",
                                                                                 "numeric_value")]
    return pa.schema(head + rest)


def _duck_type(t: pa.DataType) -> str:
    return {pa.int64(): "BIGINT", pa.string(): "VARCHAR", pa.timestamp("us"): "TIMESTAMP",
            pa.float32(): "FLOAT"}[t]
