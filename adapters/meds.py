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
import socket
import time
import uuid
from pathlib import Path

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from omop_behrt.db.database import arrow_reader, quiet, sql_literal
from omop_behrt.events import (EVENTS_SCHEMA, OBSERVATION_PERIODS_SCHEMA, EventDir, ShardWriter, extracting,
                               fill_rebuilt_visits, validate_events, validate_persons, writable_dir, write_json,
                               write_table)
from omop_behrt.lock import exclusive_lock

MEDS_VERSION = "0.4.0"
BIRTH, DEATH, SEX, SOURCE_ID = "MEDS_BIRTH", "MEDS_DEATH", "SEX/", "PERSON/SOURCE_ID"
ROWS_PER_SHARD = 5_000_000
#: persons per bucket of extract --meds-out's sort (DuckDB holds one bucket's events at a time), and the most buckets
PERSONS_PER_BUCKET, MAX_BUCKETS = 4096, 64
#: Parquet options of the MEDS shards: dictionaries for the repetitive strings only, statistics for the columns
#: readers filter on (each halves the write's CPU on the numeric and time columns where they do not pay)
MEDS_PARQUET = {"use_dictionary": ["code", "text_value", "domain", "source_code", "unit"],
                "write_statistics": ["subject_id", "time", "code"]}

# Domain for MEDS data written by other tools (no domain column): by code prefix, else "observation".
_PREFIX_DOMAIN = {"SNOMED": "condition", "ICD10CM": "condition", "ICD10": "condition", "ICD9CM": "condition",
                  "Read": "condition", "RxNorm": "drug", "RxNorm Extension": "drug", "ATC": "drug", "NDC": "drug",
                  "CVX": "immunization", "LOINC": "measurement", "LAB": "measurement", "CPT4": "procedure",
                  "HCPCS": "procedure", "ICD10PCS": "procedure", "ICD9Proc": "procedure", "OPCS4": "procedure",
                  "Visit": "visit"}


def to_meds(events: str | Path | EventDir, out: str | Path, dataset_name: str | None = None,
            rows_per_shard: int = ROWS_PER_SHARD, memory_limit: str | None = "2GB") -> dict:
    """Write an event directory as a MEDS dataset at ``out``; returns {subjects, rows, shards}.

    The event shards are read by DuckDB and written by :func:`write_meds` (one sorted pass, swapped in whole).
    """
    src = events if isinstance(events, EventDir) else EventDir.open(events)
    con = _connect(memory_limit)
    files = [str(f) for f in src.event_files()]
    if files:
        con.execute(f"CREATE TEMP VIEW events_t AS SELECT * FROM read_parquet([{', '.join(map(sql_literal, files))}])"
                    ).fetchall()
    else:
        con.register("events_t", EVENTS_SCHEMA.empty_table())
    try:
        return write_meds(con, out, persons=src.persons(), descriptions=src.descriptions(),
                          observation_periods=src.observation_periods(), manifest=src.manifest,
                          dataset_name=dataset_name or src.path.name, rows_per_shard=rows_per_shard)
    finally:
        con.close()


def _connect(memory_limit: str | None) -> duckdb.DuckDBPyConnection:
    con = quiet(duckdb.connect())
    if memory_limit:
        con.execute(f"SET memory_limit = {sql_literal(memory_limit)}").fetchall()
    return con


def write_meds(con: duckdb.DuckDBPyConnection, out: str | Path, *, persons: pa.Table, descriptions: pa.Table,
               observation_periods: pa.Table, manifest: dict, dataset_name: str,
               rows_per_shard: int = ROWS_PER_SHARD, parts: list[tuple[str, int | None, int | None]] | None = None
               ) -> dict:
    """Write the events of ``con``'s relation ``events_t`` (EVENTS_SCHEMA columns) and ``persons`` as MEDS at ``out``.

    The events and the persons' rows are sorted by DuckDB (spilling past the connection's memory limit) and
    streamed into shards of whole subjects, the codes (with the source's descriptions) gathered on the way.
    ``parts``: (relation, first subject, end subject) of consecutive subject ranges holding the events between
    them (None: unbounded), sorted one after the other so that DuckDB holds one range at a time. It is
    all written into a private folder inside ``out`` and swapped in under a lock: two runs into one folder never
    mix their shards, and a run that fails or is killed leaves the previous dataset as it was.
    """
    out = writable_dir(out, "the MEDS folder")
    work = private_folder(out)
    try:
        info = _write_dataset(con, work, persons, descriptions, observation_periods, manifest, dataset_name,
                              rows_per_shard, parts or [("events_t", None, None)])
        swap_in(work, out)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return info


#: EVENTS_SCHEMA's columns after MEDS's core ones (its optional extra columns)
_EXTRA = [f.name for f in EVENTS_SCHEMA if f.name not in ("subject_id", "time", "code", "numeric_value")]
#: the MEDS columns of an event relation (events carry no text value)
EVENT_COLUMNS_SQL = ("subject_id, time, code, numeric_value, CAST(NULL AS VARCHAR) AS text_value, "
                     + ", ".join(_EXTRA))
#: the order of a MEDS dataset's rows: by subject and time (static rows first) as MEDS asks, then by every other
#: column, so that the shards hold the same bytes whatever order the rows arrive in
MEDS_ORDER = ", ".join(["subject_id", "time NULLS FIRST", "code", "numeric_value NULLS FIRST",
                        "text_value NULLS FIRST"] + [f"{c} NULLS FIRST" for c in _EXTRA])


def person_rows_sql(persons: str, tail: str = "") -> str:
    """The MEDS rows of the persons in relation ``persons`` (PERSONS_SCHEMA): birth, death, sex, source id.

    Columns as :data:`EVENT_COLUMNS_SQL`, then ``tail`` (more constant columns, e.g. ``, NULL AS reason``).
    """
    nulls = ", ".join(f"CAST(NULL AS {_duck_type(EVENTS_SCHEMA.field(c).type)}) AS {c}" for c in _EXTRA) + tail
    return f"""
        SELECT subject_id, CAST(birth_date AS TIMESTAMP) AS time, '{BIRTH}' AS code,
               CAST(NULL AS FLOAT) AS numeric_value, CAST(NULL AS VARCHAR) AS text_value,
               {nulls} FROM {persons} WHERE birth_date IS NOT NULL
        UNION ALL
        SELECT subject_id, CAST(death_date AS TIMESTAMP), '{DEATH}', NULL, NULL, {nulls}
        FROM {persons} WHERE death_date IS NOT NULL
        UNION ALL
        SELECT subject_id, NULL, '{SEX}' || COALESCE(sex, 'U'), NULL, NULL, {nulls} FROM {persons}
        UNION ALL
        SELECT subject_id, NULL, '{SOURCE_ID}', NULL, source_id, {nulls} FROM {persons}
        WHERE source_id IS NOT NULL"""


class MedsShards:
    """MEDS rows arriving sorted by subject -> ``<out>/data/<n>.parquet`` shards of whole subjects; the subjects
    are counted and the codes gathered on the way (codes.parquet lists them)."""

    def __init__(self, out: Path, rows_per_shard: int = ROWS_PER_SHARD):
        self.schema = _meds_schema()
        self.writer = ShardWriter(out / "data", "", self.schema, rows_per_shard, key="subject_id",
                                  name="{index}.parquet", empty_shard=True, parquet=MEDS_PARQUET)
        self.codes: set[str] = set()
        self.subjects = 0
        self._last: int | None = None

    def write(self, batch: pa.RecordBatch | pa.Table) -> None:
        """Append rows holding (at least) the MEDS columns, sorted after every row written before."""
        if batch.num_rows == 0:
            return
        subject = batch.column("subject_id")
        subject = (subject.combine_chunks() if isinstance(subject, pa.ChunkedArray) else subject).to_numpy()
        self.subjects += int(np.count_nonzero(np.diff(subject))) + int(self._last != subject[0])
        self._last = int(subject[-1])
        self.codes.update(pc.unique(batch.column("code")).to_pylist())
        table = batch if isinstance(batch, pa.Table) else pa.Table.from_batches([batch])
        self.writer.write(table.select(self.schema.names).cast(self.schema))

    def close(self) -> list[Path]:
        return self.writer.close()

    @property
    def info(self) -> dict:
        return {"subjects": self.subjects, "rows": self.writer.rows, "shards": len(self.writer.files)}


def _write_dataset(con: duckdb.DuckDBPyConnection, out: Path, persons: pa.Table, descriptions: pa.Table,
                   observation_periods: pa.Table, manifest: dict, dataset_name: str, rows_per_shard: int,
                   parts: list[tuple[str, int | None, int | None]]) -> dict:
    """The MEDS dataset itself (data/, metadata/) in the fresh folder ``out``."""
    con.register("persons_t", persons)
    shards = MedsShards(out, rows_per_shard)
    for relation, lo, hi in parts:
        bounds = ([f"subject_id >= {int(lo)}"] if lo is not None else []) + \
            ([f"subject_id < {int(hi)}"] if hi is not None else [])
        persons_part = person_rows_sql(f"(SELECT * FROM persons_t WHERE {' AND '.join(bounds) or 'TRUE'})")
        rel = con.sql(f"SELECT {EVENT_COLUMNS_SQL} FROM {relation} UNION ALL {persons_part} ORDER BY {MEDS_ORDER}")
        for batch in arrow_reader(rel, batch_rows=min(rows_per_shard, 1_000_000)):
            shards.write(batch)
    shards.close()
    write_metadata(out, shards.codes, descriptions, observation_periods, manifest, dataset_name)
    return shards.info


def write_metadata(out: Path, codes: set[str], descriptions: pa.Table, observation_periods: pa.Table,
                   manifest: dict, dataset_name: str) -> None:
    """``out/metadata``: codes.parquet (every code of the data, with the source's description), dataset.json,
    the observation periods and our manifest."""
    (out / "metadata").mkdir(parents=True, exist_ok=True)
    con = duckdb.connect()
    try:
        con.register("codes_t", pa.table({"code": pa.array(sorted(codes), pa.string())}))
        con.register("descriptions_t", descriptions.select(["code", "description"]))
        table = con.sql("SELECT c.code, d.description, CAST([] AS VARCHAR[]) AS parent_codes FROM codes_t c "
                        "LEFT JOIN (SELECT code, MIN(description) AS description FROM descriptions_t GROUP BY code) "
                        "d USING (code) ORDER BY c.code").to_arrow_table()
    finally:
        con.close()
    write_table(table.cast(CODES_SCHEMA), out / "metadata" / "codes.parquet")
    from omop_behrt import __version__
    write_json({"dataset_name": dataset_name, "dataset_version": manifest.get("created_at", "1"),
                "etl_name": "omop-behrt", "etl_version": __version__, "meds_version": MEDS_VERSION,
                "created_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")},
               out / "metadata" / "dataset.json")
    write_table(observation_periods, out / "metadata" / "observation_periods.parquet")
    write_json(manifest, out / "metadata" / "omop_behrt_manifest.json")


#: what a MEDS dataset written here consists of: swapped in together, everything else in the folder is left alone
_PARTS = ("data", "metadata")


def swap_in(work: Path, out: Path, timeout: float = 600.0) -> None:
    """Replace ``out``'s data/ and metadata/ by ``work``'s, under a lock on ``out`` (renames only: instant).

    Leftovers of runs that died (their private folders, a swap cut short) are removed on the way.
    """
    lock = out / ".omop-behrt-meds.lock"
    with exclusive_lock(lock, timeout, f"{out}: another run has held the MEDS folder's lock {lock} for "
                                       f"{timeout:.0f} s; is a to-meds or extract --meds-out stuck?",
                        error=TimeoutError):
        for stale in list(out.glob(".tmp-*")) + list(out.glob(".old-*")):
            if stale.name.startswith(".old-") or _abandoned(stale):
                shutil.rmtree(stale, ignore_errors=True)
        old = out / f".old-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        old.mkdir()
        for part in _PARTS:
            if (out / part).exists():
                os.rename(out / part, old / part)
            os.rename(work / part, out / part)
        shutil.rmtree(old, ignore_errors=True)


def private_folder(out: Path, suffix: str = "") -> Path:
    """A new folder ``out/.tmp-<pid>-<random><suffix>`` of this run, its host recorded inside (see _abandoned)."""
    work = out / f".tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}{suffix}"
    work.mkdir(parents=True)
    (work / ".owner").write_text(socket.gethostname())
    return work


#: a private folder of another host is left alone unless untouched this long (its owner cannot be asked)
FOREIGN_STALE_S = 24 * 3600


def _abandoned(folder: Path) -> bool:
    """Whether a private folder belongs to a run that is gone: its process is dead on this host, or, written from
    another host (a shared file system), it has not changed for FOREIGN_STALE_S."""
    try:
        host = (folder / ".owner").read_text()
    except OSError:
        host = None
    pid = folder.name.split("-")[1]
    if host == socket.gethostname() and pid.isdigit():
        try:
            os.kill(int(pid), 0)
        except ProcessLookupError:
            return True
        except PermissionError:
            return False
        return False
    try:
        return time.time() - folder.stat().st_mtime > FOREIGN_STALE_S
    except OSError:
        return False


CODES_SCHEMA = pa.schema([("code", pa.string()), ("description", pa.string()),
                          ("parent_codes", pa.list_(pa.string()))])


def from_meds(meds: str | Path, out: str | Path, rows_per_shard: int = ROWS_PER_SHARD) -> EventDir:
    """Read a MEDS dataset (ours or another tool's) into an event directory at ``out``."""
    meds, out = Path(meds), Path(out)
    files = sorted((meds / "data").rglob("*.parquet"))
    if not files:
        raise FileNotFoundError(f"{meds} is not a MEDS dataset: no {meds}/data/**/*.parquet")
    con = quiet(duckdb.connect())
    import pyarrow.dataset as ds
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
    d = EventDir(writable_dir(out))
    with extracting(d.path):        # one run writes an event directory at a time (an extract or another from-meds)
        return _from_meds_held(con, query, persons, meds, d, rows_per_shard)


def _from_meds_held(con: duckdb.DuckDBPyConnection, query: str, persons: pa.Table, meds: Path, d: EventDir,
                    rows_per_shard: int) -> EventDir:
    """:func:`from_meds` once it holds the event directory."""
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


class EventTable:
    """The extraction's events on their way to :func:`write_meds`: ``extract(meds_out=...)`` hands each batch here
    instead of writing event shards. They are spilled to ``folder`` as lz4 Parquet (cheap to write, read once),
    cut by subject range into buckets of about ``persons_per_bucket`` persons (at most ``max_buckets``) once
    :meth:`plan` knows the persons, so that the sort holds one bucket at a time: memory stays bounded.
    """

    def __init__(self, folder: Path, memory_limit: str | None = "2GB", persons_per_bucket: int | None = None,
                 max_buckets: int | None = None):
        self.folder, self.memory_limit = Path(folder), memory_limit
        self.persons_per_bucket = persons_per_bucket or PERSONS_PER_BUCKET
        self.max_buckets = max_buckets or MAX_BUCKETS
        self.bounds = np.zeros(0, np.int64)        # the first subject id of buckets 1, 2, ...
        self.writers = [self._writer(0)]
        self._con: duckdb.DuckDBPyConnection | None = None
        #: set by the extraction when every table's events went through :meth:`write` (not from Spark)
        self.complete = False

    def _writer(self, k: int) -> ShardWriter:
        return ShardWriter(self.folder, f"b{k:03d}", EVENTS_SCHEMA, ROWS_PER_SHARD, compression="lz4",
                           parquet={"use_dictionary": ["code", "domain", "source_code", "unit"],
                                    "write_statistics": False})

    def plan(self, subject_ids: np.ndarray) -> None:
        """Cut the subjects into buckets of consecutive ids (before any event is written)."""
        if self.rows:
            raise RuntimeError("EventTable.plan: events were written already")
        ids = np.unique(np.asarray(subject_ids, np.int64))
        k = min(self.max_buckets, max(1, -(-len(ids) // self.persons_per_bucket)))
        self.bounds = ids[(np.arange(1, k) * len(ids)) // k]
        self.writers = [self._writer(i) for i in range(k)]

    @property
    def rows(self) -> int:
        return sum(w.rows for w in self.writers)

    def write(self, batch: pa.RecordBatch | pa.Table) -> None:
        """Append a batch conformed to EVENTS_SCHEMA, each row to its subject's bucket (vectorised)."""
        if batch.num_rows == 0:
            return
        if len(self.writers) == 1:
            self.writers[0].write(batch)
            return
        col = batch.column("subject_id")
        col = col.combine_chunks() if isinstance(col, pa.ChunkedArray) else col
        bucket = np.searchsorted(self.bounds, col.to_numpy(zero_copy_only=False), side="right")
        order = np.argsort(bucket, kind="stable")
        ends = np.searchsorted(bucket[order], np.arange(1, len(self.writers) + 1))
        grouped = batch.take(pa.array(order))
        start = 0
        for k, end in enumerate(ends):
            if end > start:
                self.writers[k].write(grouped.slice(start, end - start))
            start = end

    @property
    def con(self) -> duckdb.DuckDBPyConnection:
        """A DuckDB connection whose ``events_t`` is every event written and ``events_b<k>`` bucket k's (the spill
        is closed on first use)."""
        if self._con is None:
            self._con = _connect(self.memory_limit)
            self._con.execute(f"SET temp_directory = {sql_literal(str(self.folder / 'duckdb_tmp'))}").fetchall()
            for k, w in enumerate(self.writers):
                files = w.close()
                if files:
                    self._con.execute(f"CREATE TEMP VIEW events_b{k} AS SELECT * FROM read_parquet("
                                      f"[{', '.join(sql_literal(str(f)) for f in files)}])").fetchall()
                else:
                    self._con.register(f"events_b{k}", EVENTS_SCHEMA.empty_table())
            self._con.execute("CREATE TEMP VIEW events_t AS " + " UNION ALL ".join(
                f"SELECT * FROM events_b{k}" for k in range(len(self.writers)))).fetchall()
        return self._con

    def parts(self) -> list[tuple[str, int | None, int | None]]:
        """(relation, first subject, end subject) per bucket, in subject order: :func:`write_meds`'s ``parts``."""
        edges = [None] + [int(b) for b in self.bounds] + [None]
        return [(f"events_b{k}", edges[k], edges[k + 1]) for k in range(len(self.writers))]

    def code_concepts(self) -> pa.Table:
        """Distinct (code, concept_id) of the events with a concept (what codes.parquet describes)."""
        return self.con.sql("SELECT DISTINCT code, concept_id FROM events_t WHERE concept_id IS NOT NULL "
                            "AND code NOT LIKE 'OMOP/%' ORDER BY 1, 2").to_arrow_table()

    def close(self) -> None:
        for w in self.writers:
            w.close()
        if self._con is not None:
            self._con.close()
        shutil.rmtree(self.folder, ignore_errors=True)
