"""The canonical event stream: Arrow schemas, validation and the on-disk event directory.

Every adapter (OMOP, FHIR, MEDS) writes one *event directory*; everything downstream reads only that.
The events table is a MEDS DataSchema superset (subject_id, time, code, numeric_value + our columns).

    <dir>/events/part-*.parquet      events, sharded (one or more files per source table)
    <dir>/persons.parquet            one row per subject
    <dir>/observation_periods.parquet
    <dir>/quarantine.parquet         rows that could not become events, each with a reason
    <dir>/notes/part-*.parquet       clinical notes as text (optional: ``extract --notes``), NOTES_SCHEMA
    <dir>/codes.parquet              code -> description as the source gives it (optional; MEDS codes.parquet style)
    <dir>/manifest.json              source, CDM version, counts in / out / quarantined, finished parts
    <dir>/.extract.lock              held (flock) by the one extraction writing the directory
"""
from __future__ import annotations

import errno
import json
import os
import uuid
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

if TYPE_CHECKING:
    import pyarrow.dataset as ds

#: Domains an event may belong to. ``death`` holds causes of death; the death itself is persons.death_date.
DOMAINS = ("condition", "drug", "procedure", "measurement", "observation", "device", "visit", "death",
           "immunization", "allergy")

#: The largest magnitude numeric_value (a 32-bit float) holds; the adapters drop a value beyond it, NaN or infinite.
FLOAT32_MAX = 3.4028234663852886e38

EVENTS_SCHEMA = pa.schema([
    pa.field("subject_id", pa.int64(), nullable=False),
    pa.field("time", pa.timestamp("us")),            # null only for static facts
    pa.field("code", pa.string(), nullable=False),   # "VOCAB/code"
    pa.field("numeric_value", pa.float32()),
    pa.field("visit_id", pa.int64()),                # null -> rebuilt downstream from (subject, day)
    pa.field("domain", pa.string(), nullable=False),
    pa.field("concept_id", pa.int64()),              # OMOP standard concept where known
    # our additions (MEDS allows extra columns)
    pa.field("end_time", pa.timestamp("us")),        # visit / drug / condition end where the source has it
    pa.field("source_code", pa.string()),            # "VOCAB/value" as the source recorded it
    pa.field("source_concept_id", pa.int64()),
    pa.field("unit", pa.string()),                   # unit of numeric_value as the source gives it (UCUM where known)
])

#: Clinical notes (OMOP note.note_text, FHIR DocumentReference / DiagnosticReport text attachments): patient data
#: like the events, kept in the event directory only when extraction is asked for them.
NOTES_SCHEMA = pa.schema([
    pa.field("subject_id", pa.int64(), nullable=False),
    pa.field("time", pa.timestamp("us"), nullable=False),   # when the note was written (date-only at 00:00)
    pa.field("note_id", pa.string()),                       # note_id / resource id, for tracing and de-duplication
    pa.field("title", pa.string()),                         # note_title / type display, may be null
    pa.field("text", pa.string(), nullable=False),
    pa.field("visit_id", pa.int64()),
    pa.field("source", pa.string()),                        # table or resource type the note came from
])

#: Descriptions of the codes an event directory holds, as the source names them (OMOP concept_name, FHIR
#: coding.display): what the text serialiser writes instead of the code. Same columns as MEDS codes.parquet.
CODE_DESCRIPTIONS_SCHEMA = pa.schema([
    pa.field("code", pa.string(), nullable=False),
    pa.field("description", pa.string(), nullable=False),
])

PERSONS_SCHEMA = pa.schema([
    pa.field("subject_id", pa.int64(), nullable=False),
    pa.field("birth_date", pa.date32()),
    pa.field("sex", pa.string()),                    # "F", "M" or "U"
    pa.field("death_date", pa.date32()),
    pa.field("source_id", pa.string()),              # person_source_value / FHIR Patient.id
])

OBSERVATION_PERIODS_SCHEMA = pa.schema([
    pa.field("subject_id", pa.int64(), nullable=False),
    pa.field("start_date", pa.date32(), nullable=False),
    pa.field("end_date", pa.date32(), nullable=False),
])

QUARANTINE_SCHEMA = pa.schema([
    pa.field("source", pa.string()),       # table or file the row came from
    pa.field("row", pa.string()),          # primary key / line number / bundle entry index
    pa.field("subject_id", pa.int64()),
    pa.field("time", pa.timestamp("us")),
    pa.field("code", pa.string()),
    pa.field("reason", pa.string()),
])


class EventSchemaError(ValueError):
    """A table does not meet the event-stream contract; the message names the column and the problem."""


def conform(table: pa.Table, schema: pa.Schema, what: str = "events") -> pa.Table:
    """Return ``table`` with exactly ``schema``'s columns, order and types (missing nullable columns as nulls).

    Raises EventSchemaError naming the column when one is missing or cannot be cast.
    """
    cols = []
    for f in schema:
        if f.name not in table.column_names:
            if not f.nullable:
                raise EventSchemaError(f"{what}: required column {f.name!r} ({f.type}) is missing; "
                                       f"columns present: {table.column_names}")
            cols.append(pa.nulls(table.num_rows, f.type))
            continue
        col = table.column(f.name)
        if col.type != f.type:
            try:
                col = col.cast(f.type)
            except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as e:
                raise EventSchemaError(f"{what}: column {f.name!r} has type {col.type}, expected {f.type} "
                                       f"and the values do not convert: {e}") from None
        cols.append(col)
    return pa.Table.from_arrays(cols, schema=schema)


def validate_events(table: pa.Table, what: str = "events") -> pa.Table:
    """Check an events table against the contract (vectorised) and return it conformed to EVENTS_SCHEMA."""
    table = conform(table, EVENTS_SCHEMA, what)
    for name in ("subject_id", "code", "domain"):
        n = table.column(name).null_count
        if n:
            raise EventSchemaError(f"{what}: column {name!r} has {n} null values; it must not be null")
    code = table.column("code")
    bad = pc.invert(pc.match_substring_regex(code, r"^[^/\s]+/.+"))
    if pc.any(bad).as_py():
        example = pc.filter(code, bad)[0].as_py()
        raise EventSchemaError(f"{what}: column 'code' must look like 'VOCAB/code' "
                               f"(e.g. 'SNOMED/44054006'); found {example!r}")
    domain = table.column("domain")
    bad = pc.invert(pc.is_in(domain, value_set=pa.array(DOMAINS)))
    if pc.any(bad).as_py():
        example = pc.filter(domain, bad)[0].as_py()
        raise EventSchemaError(f"{what}: column 'domain' has {example!r}; expected one of {DOMAINS}")
    return table


def validate_persons(table: pa.Table, what: str = "persons") -> pa.Table:
    """Check a persons table (one row per subject_id) and return it conformed to PERSONS_SCHEMA."""
    table = conform(table, PERSONS_SCHEMA, what)
    ids = table.column("subject_id")
    if ids.null_count:
        raise EventSchemaError(f"{what}: column 'subject_id' has {ids.null_count} null values")
    if pc.count_distinct(ids).as_py() != table.num_rows:
        counts = pc.value_counts(ids)
        dup = pc.filter(counts, pc.greater(counts.field("counts"), 1))[0]["values"].as_py()
        raise EventSchemaError(f"{what}: column 'subject_id' must be unique; {dup} appears more than once")
    sex = table.column("sex")
    bad = pc.and_kleene(pc.is_valid(sex), pc.invert(pc.is_in(sex, value_set=pa.array(["F", "M", "U"]))))
    if pc.any(bad).as_py():
        raise EventSchemaError(f"{what}: column 'sex' has {pc.filter(sex, bad)[0].as_py()!r}; expected F, M or U")
    return table


class ShardWriter:
    """Writes a stream of Arrow batches as Parquet shards of about ``rows_per_shard`` rows.

    Shards are written under a temporary name and renamed when closed, so a crash never leaves a
    half-written shard under a final name (resume relies on that). Without ``key`` a shard closes after the
    batch that fills it; with ``key`` (rows arriving sorted by that column) it closes at the first change of
    the key's value past ``rows_per_shard`` rows, so no value (a MEDS subject) is ever split across shards.
    ``name`` formats a shard's file name from ``prefix`` and ``index`` (MEDS: ``"{index}.parquet"``);
    ``empty_shard`` writes one empty shard when no row came (MEDS readers expect at least one); ``compression``
    is Parquet's (zstd for what is kept; lz4 for a private spill that is read once) and ``parquet`` holds other
    ParquetWriter options (``use_dictionary``, ``write_statistics``: costly on high-cardinality columns).
    """

    def __init__(self, directory: Path, prefix: str, schema: pa.Schema, rows_per_shard: int = 5_000_000, *,
                 key: str | None = None, name: str = "{prefix}-{index:05d}.parquet", empty_shard: bool = False,
                 compression: str = "zstd", parquet: dict | None = None):
        self.directory, self.prefix, self.schema = Path(directory), prefix, schema
        self.rows_per_shard, self.key, self.name, self.empty_shard = rows_per_shard, key, name, empty_shard
        self.compression, self.parquet = compression, dict(parquet or {})
        self.directory.mkdir(parents=True, exist_ok=True)
        self.files: list[Path] = []
        self.rows = 0
        self._writer: pq.ParquetWriter | None = None
        self._tmp: Path | None = None
        self._in_shard = 0
        self._last_key = None         # the key of the last row written to the open shard

    def _open(self) -> None:
        final = self.directory / self.name.format(prefix=self.prefix, index=len(self.files))
        self._tmp = final.with_name(final.name + ".tmp")
        self._writer = pq.ParquetWriter(self._tmp, self.schema, compression=self.compression, **self.parquet)
        self.files.append(final)
        self._in_shard = 0

    def _close_shard(self) -> None:
        if self._writer is not None:
            self._writer.close()
            os.replace(self._tmp, self.files[-1])
            self._writer = None

    def _put(self, batch: pa.RecordBatch | pa.Table) -> None:
        if batch.num_rows == 0:
            return
        if self._writer is None:
            self._open()
        self._writer.write(batch)
        self._in_shard += batch.num_rows
        self.rows += batch.num_rows
        if self.key is not None:
            self._last_key = batch.column(self.key)[-1].as_py()

    def write(self, batch: pa.RecordBatch | pa.Table) -> None:
        if batch.num_rows == 0:
            return
        if self.key is None:
            self._put(batch)
            if self._in_shard >= self.rows_per_shard:
                self._close_shard()
            return
        while batch.num_rows:
            if self._writer is not None and self._in_shard >= self.rows_per_shard:
                # full: finish the last key value written (rows sorted by key), then close the shard
                keys = batch.column(self.key)
                other = pc.index(pc.not_equal(keys, pa.scalar(self._last_key, keys.type)), True).as_py()
                same = batch.num_rows if other < 0 else other
                self._put(batch.slice(0, same))
                batch = batch.slice(same)
                if batch.num_rows:
                    self._close_shard()
                continue
            room = self.rows_per_shard - (self._in_shard if self._writer is not None else 0)
            self._put(batch.slice(0, room))           # fill the shard up to its size
            batch = batch.slice(room)

    def close(self) -> list[Path]:
        if self.empty_shard and self._writer is None and not self.files:
            self._open()
        self._close_shard()
        return self.files


def write_table(table: pa.Table, path: Path, row_group_size: int | None = None) -> None:
    """Write one small table atomically (a tmp file no other writer uses, then a rename); ``row_group_size``:
    rows per row group (pyarrow's default, 1M, when None), so that a reader can take it a part at a time."""
    path = Path(path)
    tmp = path.with_name(f"{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        pq.write_table(table, tmp, compression="zstd", row_group_size=row_group_size)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def probe_write(folder: Path) -> None:
    """Write, fsync and remove a small file in ``folder``: raises the OSError a real write there would meet."""
    probe = Path(folder) / f".omop-behrt-probe-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    try:
        with open(probe, "wb") as f:
            f.write(b"probe")
            f.flush()
            os.fsync(f.fileno())
    finally:
        try:
            probe.unlink()
        except OSError:
            pass


def writable_dir(path: str | Path, what: str = "the output folder") -> Path:
    """Create the folder ``path`` if needed and prove a file can be written there, before any heavy work.

    Raises an OSError naming ``what`` and the path (a file where a folder is expected, a read-only or full disk).
    """
    p = Path(path)
    if p.exists() and not p.is_dir():
        raise NotADirectoryError(errno.ENOTDIR, f"{what} must be a folder, not a file", str(p))
    try:
        p.mkdir(parents=True, exist_ok=True)
        probe_write(p)
    except OSError as e:
        raise type(e)(e.errno, f"{what} is not writable ({e.strerror or e})", str(p)) from None
    return p


EXTRACT_LOCK = ".extract.lock"


@contextmanager
def extracting(path: str | Path) -> Iterator[None]:
    """Hold the event directory ``path`` for one extraction; a second (OMOP or FHIR) is refused at once.

    Two runs into one --out would clear, overwrite and count each other's shards and manifest half-way.
    """
    from omop_behrt.lock import exclusive_lock
    with exclusive_lock(Path(path) / EXTRACT_LOCK, 0, f"{path}: another extraction is writing this event "
                        f"directory; wait for it to finish or choose another --out", ValueError):
        yield


def write_json(obj: Any, path: Path, default: Any = str) -> None:
    """Write JSON atomically (a temp name of this process's own, then a rename); ``default`` for other types."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(obj, indent=2, sort_keys=True, default=default))
    os.replace(tmp, path)


@dataclass
class EventDir:
    """An event directory on disk: the one thing adapters write and every later stage reads."""

    path: Path
    manifest: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.path = Path(self.path)
        if not self.manifest and (self.path / "manifest.json").exists():
            self.manifest = json.loads((self.path / "manifest.json").read_text())

    @classmethod
    def open(cls, path: str | Path) -> "EventDir":
        """Open an existing event directory, failing clearly when it is not one."""
        p = Path(path)
        if not (p / "events").is_dir() or not (p / "persons.parquet").exists():
            raise FileNotFoundError(f"{p} is not an event directory: expected {p}/events/*.parquet and "
                                    f"{p}/persons.parquet (write one with `omop-behrt extract`)")
        return cls(p)

    @property
    def events_dir(self) -> Path:
        return self.path / "events"

    def event_files(self) -> list[Path]:
        return sorted(self.events_dir.glob("*.parquet"))

    def events(self) -> ds.Dataset:
        """All events as a lazily read Arrow dataset (stream it with ``.to_batches()``)."""
        import pyarrow.dataset as ds      # here: it imports pandas (0.2 s), which extraction never needs
        return ds.dataset([str(f) for f in self.event_files()], schema=EVENTS_SCHEMA, format="parquet")

    def read_events(self, columns: list[str] | None = None) -> pa.Table:
        """All events in memory; for small data and tests (use :meth:`events` to stream)."""
        return self.events().to_table(columns=columns)

    def persons(self) -> pa.Table:
        return pq.read_table(self.path / "persons.parquet", schema=PERSONS_SCHEMA)

    def observation_periods(self) -> pa.Table:
        p = self.path / "observation_periods.parquet"
        if not p.exists():
            return OBSERVATION_PERIODS_SCHEMA.empty_table()
        return pq.read_table(p, schema=OBSERVATION_PERIODS_SCHEMA)

    def quarantine(self) -> pa.Table:
        files = sorted(self.path.glob("quarantine*.parquet"))
        if not files:
            return QUARANTINE_SCHEMA.empty_table()
        return pa.concat_tables(pq.read_table(f, schema=QUARANTINE_SCHEMA) for f in files)

    @property
    def notes_dir(self) -> Path:
        return self.path / "notes"

    def note_files(self) -> list[Path]:
        return sorted(self.notes_dir.glob("*.parquet")) if self.notes_dir.is_dir() else []

    def has_notes(self) -> bool:
        """Whether extraction was asked for notes (the folder exists, perhaps empty: no note in the source)."""
        return self.notes_dir.is_dir()

    def notes(self) -> ds.Dataset:
        """The clinical notes as a lazily read Arrow dataset (empty when extraction took none)."""
        import pyarrow.dataset as ds
        files = self.note_files()
        if not files:
            return ds.dataset(NOTES_SCHEMA.empty_table())
        return ds.dataset([str(f) for f in files], schema=NOTES_SCHEMA, format="parquet")

    def descriptions(self) -> pa.Table:
        """(code, description) as the source named its codes; empty when the source gave none."""
        p = self.path / "codes.parquet"
        if not p.exists():
            return CODE_DESCRIPTIONS_SCHEMA.empty_table()
        return pq.read_table(p, schema=CODE_DESCRIPTIONS_SCHEMA)

    def write_manifest(self) -> None:
        write_json(self.manifest, self.path / "manifest.json")


_DAY_US = 86_400_000_000


def subjects_filter(subjects: np.ndarray) -> Any:
    """A dataset filter (``pyarrow.dataset`` expression) for these subjects' rows, with their id range too: the
    range lets a Parquet scan skip row groups by their statistics, which pyarrow does for ``isin`` alone only up
    to a few dozen values."""
    import pyarrow.dataset as ds
    sid = ds.field("subject_id")
    mine = sid.isin(pa.array(subjects, pa.int64()))
    if len(subjects):
        mine = (sid >= int(np.min(subjects))) & (sid <= int(np.max(subjects))) & mine
    return mine


def rebuilt_visit_ids(subject_id: np.ndarray, time_us: np.ndarray) -> np.ndarray:
    """Visit ids for events without a visit: one per (subject, calendar day), always negative.

    A splitmix64 hash of (subject_id, day) keeps them deterministic across runs and sources and disjoint from
    real (positive) visit ids, whatever the size of subject_id. Vectorised: no per-row Python.
    """
    day = np.floor_divide(time_us.astype(np.int64), _DAY_US).astype(np.uint64)
    with np.errstate(over="ignore"):
        z = subject_id.astype(np.uint64) * np.uint64(0x9E3779B97F4A7C15) + day
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        z = z ^ (z >> np.uint64(31))
    return -((z >> np.uint64(2)).astype(np.int64)) - 1


def fill_rebuilt_visits(batch: pa.RecordBatch | pa.Table) -> pa.RecordBatch | pa.Table:
    """Give every event with a subject and a time but no visit_id its rebuilt (subject, day) visit id.

    With a ``domain`` column, only rows with a domain are events (a MEDS birth or sex row among them is not)."""
    def col(name: str) -> pa.Array:
        c = batch.column(name)
        return c.combine_chunks() if isinstance(c, pa.ChunkedArray) else c
    visit, t, subj = col("visit_id"), col("time"), col("subject_id")
    if visit.null_count == 0:
        return batch
    need = pc.and_(pc.is_null(visit), pc.and_(pc.is_valid(t), pc.is_valid(subj)))
    if "domain" in batch.schema.names:
        need = pc.and_(need, pc.is_valid(col("domain")))
    if not pc.any(need).as_py():
        return batch
    rebuilt = rebuilt_visit_ids(subj.fill_null(0).to_numpy(), t.cast(pa.int64()).fill_null(0).to_numpy())
    merged = np.where(need.to_numpy(zero_copy_only=False), rebuilt, visit.fill_null(0).to_numpy())
    still_null = pc.and_(pc.is_null(visit), pc.invert(need)).to_numpy(zero_copy_only=False)
    i = batch.schema.get_field_index("visit_id")
    return batch.set_column(i, batch.schema.field(i), pa.array(merged, pa.int64(), mask=still_null))
