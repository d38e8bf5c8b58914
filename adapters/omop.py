"""OMOP CDM 5.3 / 5.4 -> the canonical event stream, with the SQL running inside the CDM's database.

Works on a DuckDB file, any SQLAlchemy URL (PostgreSQL tested) or a folder of CSV/Parquet table exports.
Column names may be in any case (Eunomia's are UPPER-CASE): every column is looked up in the database's
catalogue and quoted as stored. The SQL is in ``sql/omop/``; this module only fills in identifiers.
"""
from __future__ import annotations

import datetime as dt
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from tqdm.auto import tqdm

from ..cdm import OmopCdm
from ..database import Database, load_sql, render
from ..events import (EVENTS_SCHEMA, OBSERVATION_PERIODS_SCHEMA, PERSONS_SCHEMA, QUARANTINE_SCHEMA, EventDir,
                      ShardWriter, fill_rebuilt_visits, write_table)


@dataclass(frozen=True)
class EventTable:
    """How one CDM table becomes events: which column plays which role."""

    table: str
    domain: str
    row_id: str | None
    concept: str
    start_date: str
    start_datetime: str | None = None
    end_date: str | None = None
    source_value: str | None = None
    source_concept: str | None = None
    value: str | None = None
    visit: str | None = "visit_occurrence_id"
    required: bool = True
    coded_only: bool = False      # read only rows that carry a code (death rows that only give the date do not)


EVENT_TABLES: dict[str, EventTable] = {t.domain: t for t in [
    EventTable("visit_occurrence", "visit", "visit_occurrence_id", "visit_concept_id", "visit_start_date",
               "visit_start_datetime", "visit_end_date", None, None, visit="visit_occurrence_id"),
    EventTable("condition_occurrence", "condition", "condition_occurrence_id", "condition_concept_id",
               "condition_start_date", "condition_start_datetime", "condition_end_date",
               "condition_source_value", "condition_source_concept_id"),
    EventTable("drug_exposure", "drug", "drug_exposure_id", "drug_concept_id", "drug_exposure_start_date",
               "drug_exposure_start_datetime", "drug_exposure_end_date", "drug_source_value",
               "drug_source_concept_id"),
    EventTable("procedure_occurrence", "procedure", "procedure_occurrence_id", "procedure_concept_id",
               "procedure_date", "procedure_datetime", "procedure_end_date", "procedure_source_value",
               "procedure_source_concept_id"),
    EventTable("measurement", "measurement", "measurement_id", "measurement_concept_id", "measurement_date",
               "measurement_datetime", None, "measurement_source_value", "measurement_source_concept_id",
               value="value_as_number"),
    EventTable("observation", "observation", "observation_id", "observation_concept_id", "observation_date",
               "observation_datetime", None, "observation_source_value", "observation_source_concept_id",
               value="value_as_number"),
    EventTable("device_exposure", "device", "device_exposure_id", "device_concept_id",
               "device_exposure_start_date", "device_exposure_start_datetime", "device_exposure_end_date",
               "device_source_value", "device_source_concept_id", required=False),
    EventTable("death", "death", "person_id", "cause_concept_id", "death_date", "death_datetime", None,
               "cause_source_value", "cause_source_concept_id", visit=None, required=False, coded_only=True),
]}
DOMAINS = tuple(EVENT_TABLES)


@dataclass
class ExtractSummary:
    """What an extraction read and wrote; printed by the CLI and stored in the manifest."""

    source: str
    cdm_version: str
    persons: int = 0
    events_in: int = 0
    events_out: int = 0
    quarantined: int = 0
    events_by_domain: dict = field(default_factory=dict)
    quarantined_by_reason: dict = field(default_factory=dict)
    visits: int = 0
    rebuilt_visits: int = 0
    warnings: list = field(default_factory=list)
    seconds: float = 0.0

    def as_dict(self) -> dict:
        return dict(self.__dict__)

    def table(self) -> str:
        """A human-readable summary."""
        lines = [f"source        {self.source} (OMOP CDM {self.cdm_version})",
                 f"persons       {self.persons:,}",
                 f"events        {self.events_out:,} written, {self.quarantined:,} quarantined, "
                 f"{self.events_in:,} read"]
        for d, n in sorted(self.events_by_domain.items()):
            lines.append(f"  {d:<12}{n:>12,}")
        lines.append(f"visits        {self.visits:,} from visit_occurrence, {self.rebuilt_visits:,} rebuilt "
                     f"from (person, day)")
        for r, n in sorted(self.quarantined_by_reason.items()):
            lines.append(f"  quarantined {n:>10,}  {r}")
        for w in self.warnings:
            lines.append(f"warning: {w}")
        lines.append(f"time          {self.seconds:.1f} s")
        return "\n".join(lines)


def _filters(cdm: OmopCdm, person_col: str, date_col: str | None, options: "ExtractOptions") -> tuple[str, dict]:
    clauses, params = [], {}
    if options.person_ids is not None:
        params["person_ids"] = [int(x) for x in options.person_ids]
        clauses.append(f"list_contains(:person_ids, {person_col})" if cdm.db.dialect == "duckdb"
                       else f"{person_col} = ANY(:person_ids)")
    if options.cohort_id is not None:
        from ..cohorts import CohortTable
        table, c = CohortTable(cdm.db, cdm.results_schema, options.cohort_table).resolve(
            ("cohort_definition_id", "subject_id"))
        clauses.append(f"{person_col} IN (SELECT c.{c['subject_id']} FROM {table} c "
                       f"WHERE c.{c['cohort_definition_id']} = :cohort_id)")
        params["cohort_id"] = int(options.cohort_id)
    if options.index_dates is not None:
        # censoring at the index date happens here, inside the database: only events before it are read
        params.update(options.index_params())
        derived = ("SELECT unnest(CAST(:ix_subject AS BIGINT[])) AS subject_id, "
                   "unnest(CAST(:ix_date AS DATE[])) AS index_date")
        op = "<=" if options.inclusive else "<"
        cond = "ix.index_date IS NOT NULL" if date_col is None else f"{date_col} {op} ix.index_date"
        clauses.append(f"EXISTS (SELECT 1 FROM ({derived}) ix WHERE ix.subject_id = {person_col} AND {cond})")
    if date_col is not None and options.start is not None:
        clauses.append(f"({date_col} IS NULL OR {date_col} >= :start_date)")
        params["start_date"] = options.start
    if date_col is not None and options.end is not None:
        clauses.append(f"({date_col} IS NULL OR {date_col} < :end_date)")
        params["end_date"] = options.end
    return (" AND ".join(clauses) or "1 = 1"), params


def events_sql(cdm: OmopCdm, spec: EventTable, options: "ExtractOptions") -> tuple[str, dict]:
    """The extraction query for one clinical table, and its bind parameters."""
    t = spec.table
    col = lambda c, **kw: cdm.col(t, c, "e", **kw) if c else "NULL"   # noqa: E731
    start_raw = col(spec.start_date)
    start_date = cdm.cast(start_raw, "DATE")
    where, params = _filters(cdm, col("person_id"), start_date, options)
    if spec.coded_only:
        where = (f"(COALESCE({col(spec.concept)}, 0) <> 0 OR "
                 f"{col(spec.source_value, optional=True)} IS NOT NULL) AND {where}")
    value = cdm.cast(col(spec.value, optional=True), "DOUBLE PRECISION") if spec.value else "NULL"
    prefix = "'SOURCE_" + spec.domain.upper() + "'"
    frag = {
        "table": cdm.qtable(t) + " ",
        "row_id": col(spec.row_id, optional=True) if spec.row_id else "NULL",
        "person_id": cdm.col(t, "person_id"),
        "start_date": start_date, "start_raw": start_raw,
        "start_datetime": (cdm.cast(col(spec.start_datetime, optional=True), "TIMESTAMP")
                           if spec.start_datetime else "NULL"),
        "end_date": cdm.cast(col(spec.end_date, optional=True), "DATE") if spec.end_date else "NULL",
        "concept_id": col(spec.concept),
        "source_value": col(spec.source_value, optional=True),
        "source_concept_id": col(spec.source_concept, optional=True),
        "value": value,
        "visit_ref": col(spec.visit, optional=True) if spec.visit else "NULL",
        "where": where,
        "domain": f"'{spec.domain}'",
        "domain_source_prefix": prefix,
        "null_date_reason": f"'null {spec.start_date}'",
        "bad_date_reason": f"'unparseable {spec.start_date}'",
        "range_date_reason": f"'{spec.start_date} outside 1800-01-01..2149-12-31'",
        "visit_table": cdm.qtable("visit_occurrence"),
        "v_visit_occurrence_id": cdm.col("visit_occurrence", "visit_occurrence_id"),
        "v_person_id": cdm.col("visit_occurrence", "person_id"),
        "person_table": cdm.qtable("person"),
        "p_person_id": cdm.col("person", "person_id"),
        "p_year_of_birth": cdm.col("person", "year_of_birth"),
        "concept_table": cdm.qtable("concept"),
        "c_concept_id": cdm.col("concept", "concept_id"),
        "c_vocabulary_id": cdm.col("concept", "vocabulary_id"),
        "c_concept_code": cdm.col("concept", "concept_code"),
    }
    return render(load_sql("omop/events.sql"), frag), params


def persons_sql(cdm: OmopCdm, options: "ExtractOptions") -> tuple[str, dict]:
    col = lambda c, **kw: cdm.col("person", c, "p", **kw)   # noqa: E731
    where, params = _filters(cdm, col("person_id"), None, options)
    death = "CAST(NULL AS DATE)"
    if cdm.has_table("death") and {"person_id", "death_date"} <= set(cdm.columns("death")):
        death = (f"(SELECT MIN({cdm.cast(cdm.col('death', 'death_date', 'd'), 'DATE')}) FROM "
                 f"{cdm.qtable('death')} d WHERE {cdm.col('death', 'person_id', 'd')} = {col('person_id')})")
    frag = {
        "p_person_id": cdm.col("person", "person_id"), "p_year_of_birth": cdm.col("person", "year_of_birth"),
        "p_gender_concept_id": cdm.col("person", "gender_concept_id"),
        "birth_datetime": cdm.cast(col("birth_datetime", optional=True), "DATE"),
        "month_of_birth": col("month_of_birth", optional=True), "day_of_birth": col("day_of_birth", optional=True),
        "gender_source_value": col("gender_source_value", optional=True),
        "person_source_value": col("person_source_value", optional=True),
        "death_date": death, "person_table": cdm.qtable("person"), "where": where,
    }
    return render(load_sql("omop/persons.sql"), frag), params


def observation_periods_sql(cdm: OmopCdm, options: "ExtractOptions") -> tuple[str, dict]:
    t = "observation_period"
    where, params = _filters(cdm, cdm.col(t, "person_id", "o"), None, options)
    frag = {"o_person_id": cdm.col(t, "person_id"), "o_start": cdm.col(t, "observation_period_start_date"),
            "o_end": cdm.col(t, "observation_period_end_date"),
            "o_id": cdm.col(t, "observation_period_id" if "observation_period_id" in cdm.columns(t)
                             else "person_id"),
            "op_table": cdm.qtable(t), "where": where}
    return render(load_sql("omop/observation_periods.sql"), frag), params


@dataclass
class ExtractOptions:
    """Optional filters: a list of person ids or a cohort, a date window [start, end), the domains to read."""

    person_ids: Sequence[int] | None = None
    cohort_id: int | None = None
    cohort_table: str = "cohort"
    start: dt.date | None = None
    end: dt.date | None = None
    domains: Sequence[str] | None = None
    #: (subject_id, index_date) rows: read only these persons, and only their events before their (latest)
    #: index date, on or before it when ``inclusive``; see omop_behrt.cohorts for where index dates come from
    index_dates: pa.Table | None = None
    inclusive: bool = False
    _index_params: dict | None = field(default=None, init=False, repr=False, compare=False)

    def index_params(self) -> dict:
        """Each subject's latest index date as two bound arrays, converted once per extraction."""
        if self._index_params is None:
            ix = self.index_dates.group_by("subject_id").aggregate([("index_date", "max")])
            self._index_params = {
                "ix_subject": ix["subject_id"].cast(pa.int64()).to_pylist(),
                "ix_date": ix["index_date_max"].cast(pa.timestamp("us")).cast(pa.date32()).to_pylist()}
        return self._index_params


_EVENT_COLUMNS = [f.name for f in EVENTS_SCHEMA]


def _query_schema(schema: pa.Schema, *extra: str) -> pa.Schema:
    """The contract's schema with every column nullable (bad rows still arrive) plus row_key/reason."""
    return pa.schema([f.with_nullable(True) for f in schema] + [pa.field(e, pa.string()) for e in extra])


_QUERY_SCHEMA = _query_schema(EVENTS_SCHEMA, "row_key", "reason")
_PERSON_QUERY_SCHEMA = _query_schema(PERSONS_SCHEMA, "reason")
_OP_QUERY_SCHEMA = _query_schema(OBSERVATION_PERIODS_SCHEMA, "row_key", "reason")


def _quarantine_rows(batch: pa.RecordBatch | pa.Table, mask, source: str, with_code: bool = True) -> pa.Table:
    bad = batch.filter(mask)
    n = bad.num_rows
    return pa.table({
        "source": pa.array([source] * n, pa.string()),
        "row": bad.column("row_key") if "row_key" in bad.column_names else pa.nulls(n, pa.string()),
        "subject_id": bad.column("subject_id"),
        "time": bad.column("time") if "time" in bad.column_names else pa.nulls(n, pa.timestamp("us")),
        "code": bad.column("code") if with_code and "code" in bad.column_names else pa.nulls(n, pa.string()),
        "reason": bad.column("reason"),
    }, schema=QUARANTINE_SCHEMA)


def extract(source: "str | Path | Database", out: str | Path, *, cdm_schema: str | None = None,
            vocab_schema: str | None = None, results_schema: str | None = None,
            options: ExtractOptions | None = None, resume: bool = False, batch_rows: int = 500_000,
            rows_per_shard: int = 5_000_000, memory_limit: str | None = "2GB",
            progress: bool = True) -> ExtractSummary:
    """Read an OMOP CDM into an event directory at ``out`` and return what was read and written.

    Each table is one streamed query; a finished table is recorded in the manifest, so ``resume=True``
    skips it after an interruption. Rows with a null person or date (and the like) go to quarantine.
    ``memory_limit`` bounds an in-process DuckDB source (it spills to ``out/.duckdb_tmp``); a server's own
    settings govern a SQLAlchemy source.
    """
    t0 = time.perf_counter()
    options = options or ExtractOptions()
    cdm = OmopCdm(source, cdm_schema, vocab_schema, results_schema)
    domains = list(options.domains or DOMAINS)
    unknown = [d for d in domains if d not in EVENT_TABLES]
    if unknown:
        raise ValueError(f"unknown domain(s) {unknown}; expected some of {list(DOMAINS)}")
    for table in ("person", "concept", "visit_occurrence", "observation_period"):
        cdm.require(table)
    for d in domains:
        spec = EVENT_TABLES[d]
        if spec.required:
            cdm.require(spec.table)

    out = EventDir(Path(out))
    out.path.mkdir(parents=True, exist_ok=True)
    cdm.db.limit_memory(memory_limit, out.path / ".duckdb_tmp")
    manifest = out.manifest if resume else {}
    if resume and manifest.get("source") not in (None, cdm.db.description):
        raise ValueError(f"--resume: {out.path} was extracted from {manifest.get('source')}, "
                         f"not {cdm.db.description}")
    if not resume:
        for old in (list(out.events_dir.glob("*.parquet*")) + list(out.path.glob("quarantine*.parquet*"))
                    + list(out.path.glob(".state/visits-*.npy"))):
            old.unlink()
    done: dict = manifest.setdefault("parts", {})
    manifest.update({"source": cdm.db.description, "adapter": "omop", "cdm_version": cdm.cdm_version,
                     "vocabulary_version": cdm.vocabulary_version,
                     "cdm_schema": cdm.cdm_schema, "vocab_schema": cdm.vocab_schema,
                     "filters": {k: (list(v) if isinstance(v, (list, tuple)) else
                                     f"{v.num_rows} index dates" if isinstance(v, pa.Table) else v)
                                 for k, v in options.__dict__.items() if v is not None and not k.startswith("_")}})
    out.manifest = manifest
    summary = ExtractSummary(source=cdm.db.description, cdm_version=cdm.cdm_version)

    # persons and observation periods: small, one query each
    if "persons" not in done:
        sql, params = persons_sql(cdm, options)
        persons = cdm.db.query(sql, params, _PERSON_QUERY_SCHEMA)
        ok = pc.is_null(persons.column("reason"))
        write_table(persons.filter(ok).select(PERSONS_SCHEMA.names).cast(PERSONS_SCHEMA), out.path / "persons.parquet")
        write_table(_quarantine_rows(persons, pc.invert(ok), "person", with_code=False),
                    out.path / "quarantine-person.parquet")
        sql, params = observation_periods_sql(cdm, options)
        ops = cdm.db.query(sql, params, _OP_QUERY_SCHEMA)
        ok = pc.is_null(ops.column("reason"))
        write_table(ops.filter(ok).select(OBSERVATION_PERIODS_SCHEMA.names).cast(OBSERVATION_PERIODS_SCHEMA),
                    out.path / "observation_periods.parquet")
        write_table(_quarantine_rows(ops, pc.invert(ok), "observation_period", with_code=False),
                    out.path / "quarantine-observation_period.parquet")
        done["persons"] = {"rows_in": persons.num_rows + ops.num_rows}
        out.write_manifest()

    for d in domains:
        spec = EVENT_TABLES[d]
        if d in done:
            continue
        if not cdm.has_table(spec.table):
            if not cdm.in_catalogue(spec.table):
                summary.warnings.append(f"table {spec.table} absent: no {d} events")
            continue
        sql, params = events_sql(cdm, spec, options)
        total = cdm.db.scalar(f"SELECT COUNT(*) FROM {cdm.qtable(spec.table)}") if cdm.db.cheap_count else None
        writer = ShardWriter(out.events_dir, spec.table, EVENTS_SCHEMA, rows_per_shard)
        quarantine: list[pa.Table] = []
        visit_ids: list[np.ndarray] = []      # distinct visit ids per batch, for the summary's visit counts
        rows_in = 0
        with tqdm(total=total, desc=f"extract {spec.table}", unit="row", unit_scale=True,
                  disable=not progress, leave=False) as bar:
            for batch in cdm.db.stream(sql, params, _QUERY_SCHEMA, batch_rows):
                rows_in += batch.num_rows
                batch = fill_rebuilt_visits(batch)
                ok = pc.is_null(batch.column("reason"))
                good = batch if pc.all(ok).as_py() else batch.filter(ok)
                writer.write(good.select(_EVENT_COLUMNS).cast(EVENTS_SCHEMA))
                if good.num_rows < batch.num_rows:
                    quarantine.append(_quarantine_rows(batch, pc.invert(ok), spec.table))
                v = good.column("visit_id").to_numpy(zero_copy_only=False)
                visit_ids.append(_distinct(v if d != "visit" else v[:0]))
                bar.update(batch.num_rows)
        writer.close()
        q = pa.concat_tables(quarantine) if quarantine else QUARANTINE_SCHEMA.empty_table()
        write_table(q, out.path / f"quarantine-{spec.table}.parquet")
        state = out.path / ".state"
        state.mkdir(exist_ok=True)
        np.save(state / f"visits-{spec.table}.npy", _distinct(np.concatenate(visit_ids)) if visit_ids
                else np.zeros(0, np.int64))
        done[d] = {"rows_in": rows_in, "rows_out": writer.rows, "quarantined": q.num_rows,
                   "files": [f.name for f in writer.files]}
        out.write_manifest()

    summary.warnings = cdm.warnings + summary.warnings
    _fill_counts(out, summary)
    summary.seconds = round(time.perf_counter() - t0, 3)
    manifest["summary"] = summary.as_dict()
    out.write_manifest()
    return summary


def _distinct(a: np.ndarray) -> np.ndarray:
    """Sorted distinct values (sort + neighbour compare; faster here than numpy 2's hash-based unique)."""
    a = np.sort(a)
    return a[np.concatenate(([True], a[1:] != a[:-1]))] if len(a) else a


def _fill_counts(out: EventDir, summary: ExtractSummary) -> None:
    """Totals over every finished table (a resumed run reports the whole extraction), without re-reading events.

    Real visits are the visit_occurrence rows written (each real visit is one visit event; other events only
    keep visit ids that join one) plus, when visits were not extracted, the distinct ids other events carry;
    rebuilt visits are the distinct negative ids over all tables.
    """
    parts = {k: v for k, v in out.manifest.get("parts", {}).items() if k != "persons"}
    summary.events_in = sum(v.get("rows_in", 0) for v in parts.values())
    summary.events_by_domain = {d: v["rows_out"] for d, v in parts.items() if v.get("rows_out")}
    summary.events_out = sum(summary.events_by_domain.values())
    ids = [np.load(f) for f in sorted((out.path / ".state").glob("visits-*.npy"))]
    ids = _distinct(np.concatenate(ids)) if ids else np.zeros(0, np.int64)
    summary.rebuilt_visits = int((ids < 0).sum())
    summary.visits = summary.events_by_domain.get("visit", 0) or int((ids > 0).sum())
    q = out.quarantine()
    summary.quarantined_by_reason = {f"{r['source']}: {r['reason']}": r["reason_count"] for r in
                                     q.group_by(["source", "reason"]).aggregate([("reason", "count")]).to_pylist()}
    summary.quarantined = sum(n for k, n in summary.quarantined_by_reason.items()
                              if not k.startswith(("person:", "observation_period:")))
    summary.persons = out.persons().num_rows
    shutil.rmtree(out.path / ".duckdb_tmp", ignore_errors=True)
