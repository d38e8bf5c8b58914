"""What each OMOP CDM table contributes to the event stream, the extraction options and summary, and the SQL
that reads it.

The SQL is in ``sql/omop/``; this module only fills in validated, quoted identifiers (looked up in the
database's catalogue, any case) and collects the bound values. Every value is typed with ``OmopCdm.cast``
(NULL where it does not parse), so a bad value makes a quarantine row with a reason instead of aborting.
The query run here is the one that shapes the others: the duplicate-id check (the joins staged once are
in :mod:`omop_staging`).
"""
from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from typing import Sequence

import pyarrow as pa

from omop_behrt.db.cdm import OmopCdm
from omop_behrt.db.database import _BIND, IDENTIFIER, load_sql, quote, render, sql_literal
from omop_behrt.events import FLOAT32_MAX


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
    unit: tuple[str, str] | None = None   # (unit_concept_id, unit_source_value) columns of numeric_value's unit
    visit: str | None = "visit_occurrence_id"
    unique_id: bool = True        # row_id is the table's primary key: a second row with it is a duplicate
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
               value="value_as_number", unit=("unit_concept_id", "unit_source_value")),
    EventTable("observation", "observation", "observation_id", "observation_concept_id", "observation_date",
               "observation_datetime", None, "observation_source_value", "observation_source_concept_id",
               value="value_as_number", unit=("unit_concept_id", "unit_source_value")),
    EventTable("device_exposure", "device", "device_exposure_id", "device_concept_id",
               "device_exposure_start_date", "device_exposure_start_datetime", "device_exposure_end_date",
               "device_source_value", "device_source_concept_id"),
    # death rows are keyed by person_id, and a CDM may hold one row per cause: not duplicates
    EventTable("death", "death", "person_id", "cause_concept_id", "death_date", "death_datetime", None,
               "cause_source_value", "cause_source_concept_id", visit=None, unique_id=False, coded_only=True),
]}
DOMAINS = tuple(EVENT_TABLES)
#: tables every extraction reads, whatever the domains (persons, their observation, visits, concepts)
REQUIRED_TABLES = ("person", "observation_period", "visit_occurrence", "concept")

#: The default valid dates. The lower bound is older than any living record; the upper bound catches the
#: 9999-12-31 sentinels while keeping de-identified data whose dates are shifted a century or two ahead
#: (real exports span 2110-2202): a fixed "today" or 2150 bound would empty such persons.
VALID_START, VALID_END = dt.date(1800, 1, 1), dt.date(2999, 12, 31)


@dataclass
class ExtractOptions:
    """Filters (person ids, a cohort, index dates, a date window [start, end), domains) and the data checks."""

    person_ids: Sequence[int] | None = None
    cohort_id: int | None = None
    cohort_table: str = "cohort"
    start: dt.date | None = None
    end: dt.date | None = None
    domains: Sequence[str] | None = None
    #: (subject_id, index_date) rows: read only these persons, and only their events before their (latest)
    #: index date, on or before it when ``inclusive``; see omop_behrt.tasks.cohorts for where index dates come from
    index_dates: pa.Table | None = None
    inclusive: bool = False
    #: dates outside [valid_start, valid_end] (events, births, deaths, observation periods) are not trusted:
    #: the row is quarantined (a death date is not used) with the reason
    valid_start: dt.date = VALID_START
    valid_end: dt.date = VALID_END
    #: an event more than this many days after the person's death is quarantined
    after_death_days: int = 60
    #: an extraction that matches no person is an error unless this is set
    allow_empty: bool = False
    #: check that each row id appears once (one aggregate over the id column per table, skipped anyway where
    #: the database declares the primary key); off: repeated records are all written
    check_duplicates: bool = True
    #: also read the clinical notes (note.note_text) into the event directory's notes/ (patient text)
    notes: bool = False
    _index_params: dict | None = field(default=None, init=False, repr=False, compare=False)

    def check(self) -> None:
        """Refuse contradictory options before any work (ValueError naming them)."""
        if self.start is not None and self.end is not None and self.start >= self.end:
            raise ValueError(f"--start {self.start} is not before --end {self.end}: no event could match "
                             f"(the window is [start, end))")
        if self.valid_start >= self.valid_end:
            raise ValueError(f"--valid-dates {self.valid_start}:{self.valid_end}: the start must be before the end")
        if self.after_death_days < 0:
            raise ValueError(f"after_death_days must be >= 0, got {self.after_death_days}")
        unknown = [d for d in (self.domains or ()) if d not in EVENT_TABLES]
        if unknown:
            raise ValueError(f"unknown domain(s) {unknown}; expected some of {list(DOMAINS)}")

    def index_params(self) -> dict:
        """Each subject's latest index date as two bound arrays, converted once per extraction."""
        if self._index_params is None:
            ix = self.index_dates.group_by("subject_id").aggregate([("index_date", "max")])
            self._index_params = {
                "ix_subject": ix["subject_id"].cast(pa.int64()).to_pylist(),
                "ix_date": ix["index_date_max"].cast(pa.timestamp("us")).cast(pa.date32()).to_pylist()}
        return self._index_params

    def check_params(self) -> dict:
        """The bound values every query's data checks use."""
        return {"valid_start": self.valid_start, "valid_end": self.valid_end,
                "after_death_days": int(self.after_death_days)}

    @property
    def window(self) -> str:
        return f"{self.valid_start}..{self.valid_end}"


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
    #: values not used but the row kept ("condition_occurrence: condition_start_datetime ignored ...": n)
    notes: dict = field(default_factory=dict)
    #: warning-level checks per domain ({OUTSIDE_OBSERVATION: {"condition": n}})
    checks: dict = field(default_factory=dict)
    skipped: dict = field(default_factory=dict)          # domain -> why it was not read
    skipped_files: list = field(default_factory=list)    # files of a source folder not read as tables
    visits: int = 0
    rebuilt_visits: int = 0
    #: with ExtractOptions.notes: the note table's rows read, written to notes/ and quarantined
    clinical_notes: dict | None = None
    warnings: list = field(default_factory=list)
    #: with ``meds_out``: where the MEDS dataset went and its {subjects, rows, shards}
    meds: dict | None = None
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
        if self.clinical_notes is not None:
            c = self.clinical_notes
            lines.append(f"notes         {c['written']:,} written, {c['quarantined']:,} quarantined, {c['read']:,} "
                         f"read (clinical notes: patient text)")
        for r, n in sorted(self.quarantined_by_reason.items()):
            lines.append(f"  quarantined {n:>10,}  {r}")
        for r, n in sorted(self.notes.items()):
            lines.append(f"  noted       {n:>10,}  {r}")
        for check, by_domain in sorted(self.checks.items()):
            detail = ", ".join(f"{d} {n:,}" for d, n in sorted(by_domain.items()))
            lines.append(f"  checked     {sum(by_domain.values()):>10,}  {check}: {detail}")
        for d, why in sorted(self.skipped.items()):
            lines.append(f"skipped: {d} ({why})")
        if self.skipped_files:
            lines.append(f"{len(self.skipped_files)} file(s) skipped: " + ", ".join(
                f"{f['file']} ({f['reason']})" for f in self.skipped_files))
        for w in self.warnings:
            lines.append(f"warning: {w}")
        if self.meds is not None:
            m = self.meds
            lines.append(f"MEDS          {m['subjects']:,} subjects, {m['rows']:,} rows, {m['shards']:,} shard(s) "
                         f"in {m['path']}")
        lines.append(f"time          {self.seconds:.1f} s")
        return "\n".join(lines)


def _used(sql: str, params: dict) -> tuple[str, dict]:
    """The query with only the bound values it names (DuckDB refuses extra ones)."""
    names = set(_BIND.findall(sql))
    return sql, {k: v for k, v in params.items() if k in names}


def _cast_errors(cdm: OmopCdm, table: str, alias: str, columns: list[str]) -> str:
    """The per-row reason a DDL-typed column does not parse (OmopCdm.cast_errors), or NULL."""
    present = [c for c in columns if c in cdm.columns(table)]
    return cdm.cast_errors(table, alias=alias, columns=present) if present else "CAST(NULL AS VARCHAR)"


def _first_row_order(cdm: OmopCdm, table: str, alias: str) -> str:
    """ORDER BY list that picks the row kept among duplicates: the most complete, then the first by all columns."""
    cols = [cdm.col(table, c, alias) for c, stored in cdm.columns(table).items() if IDENTIFIER.match(stored)]
    nulls = " + ".join(f"CASE WHEN {c} IS NULL THEN 1 ELSE 0 END" for c in cols)
    return ", ".join([f"({nulls})"] + cols)


def _filters(cdm: OmopCdm, person_col: str, date_col: str | None, options: ExtractOptions) -> tuple[str, dict]:
    clauses, params = [], options.check_params()
    if options.person_ids is not None:
        params["person_ids"] = [int(x) for x in options.person_ids]
        clauses.append(f"list_contains(:person_ids, {person_col})" if cdm.db.dialect == "duckdb"
                       else f"{person_col} = ANY(:person_ids)")
    if options.cohort_id is not None:
        from omop_behrt.tasks.cohorts import CohortTable
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


def _deaths_sql(cdm: OmopCdm) -> str:
    if not (cdm.has_table("death") and {"person_id", "death_date"} <= set(cdm.columns("death"))):
        return "SELECT CAST(NULL AS BIGINT) AS person_id, CAST(NULL AS DATE) AS death_date WHERE 1 = 0"
    return render(load_sql("omop/deaths.sql"), {
        "d_person_id": cdm.cast(cdm.col("death", "person_id", "d"), "BIGINT"),
        "d_death_date": cdm.cast(cdm.col("death", "death_date", "d"), "DATE"),
        "death_table": cdm.qtable("death")})


def _op_cols(cdm: OmopCdm) -> dict:
    t = "observation_period"
    return {"o_person_id": cdm.cast(cdm.col(t, "person_id", "o"), "BIGINT"),
            "o_start": cdm.cast(cdm.col(t, "observation_period_start_date", "o"), "DATE"),
            "o_end": cdm.cast(cdm.col(t, "observation_period_end_date", "o"), "DATE"),
            "op_table": cdm.qtable(t)}


def person_status_sql(cdm: OmopCdm, options: ExtractOptions) -> tuple[str, dict]:
    """Every person row with its typed birth/death dates, duplicate rank and quarantine reason (a subquery)."""
    col = lambda c, **kw: cdm.col("person", c, "p", **kw)   # noqa: E731
    person_id = cdm.cast(col("person_id"), "BIGINT")
    where, params = _filters(cdm, person_id, None, options)
    op = _op_cols(cdm)
    frag = {
        "person_id": person_id, "person_raw": cdm.raw("person", "person_id", "p"),
        "year_of_birth": cdm.cast(col("year_of_birth"), "INTEGER"), "year_raw": col("year_of_birth"),
        "month_of_birth": cdm.cast(col("month_of_birth", optional=True), "INTEGER"),
        "day_of_birth": cdm.cast(col("day_of_birth", optional=True), "INTEGER"),
        "birth_datetime": cdm.cast(col("birth_datetime", optional=True), "DATE"),
        "gender_concept_id": cdm.cast(col("gender_concept_id"), "BIGINT"),
        "gender_source_value": col("gender_source_value", optional=True),
        "person_source_value": col("person_source_value", optional=True),
        "cast_errors": _cast_errors(cdm, "person", "p", ["person_id", "year_of_birth"]),
        "all_columns": _first_row_order(cdm, "person", "p"),
        "deaths": _deaths_sql(cdm),
        "observed": render(load_sql("omop/observed.sql"), op),
        "person_table": cdm.qtable("person"), "where": where,
        "birth_range_reason": sql_literal(f"birth date outside the valid dates {options.window}"),
    }
    return _used(render(load_sql("omop/person_status.sql"), frag), params)


def persons_sql(cdm: OmopCdm, options: ExtractOptions) -> tuple[str, dict]:
    """The persons query: one row per person row, bad ones with a reason, values not used with a note."""
    status, params = person_status_sql(cdm, options)
    return _used(render(load_sql("omop/persons.sql"), {"person_status": status}), params)


def _record(cdm: OmopCdm, spec: EventTable) -> str:
    """The columns that identify a record: row id, person, start date, concept, source value (as stored)."""
    cols = [spec.row_id, "person_id", spec.start_date, spec.concept, spec.source_value]
    return ", ".join(cdm.col(spec.table, c, "e") for c in cols if c and c in cdm.columns(spec.table))


def duplicate_counts(cdm: OmopCdm, spec: EventTable) -> tuple[int, int]:
    """(rows repeating another row's record, rows sharing their id with another record) in the whole table."""
    if not spec.unique_id or spec.row_id is None or spec.row_id not in cdm.columns(spec.table):
        return 0, 0
    declared = {"schema_name": cdm.cdm_schema, "table_name": spec.table, "column_name": spec.row_id}
    if cdm.db.scalar(load_sql("omop/declared_unique.sql"), declared) is not None:
        return 0, 0
    frag = {"table": cdm.qtable(spec.table), "row_id": cdm.col(spec.table, spec.row_id, "e"),
            "record": _record(cdm, spec)}
    if cdm.db.scalar(render(load_sql("omop/repeated_ids.sql"), frag)) is None:
        return 0, 0
    sql = render(load_sql("omop/duplicate_ids.sql"), frag)
    with cdm.db.transaction() as tx:
        dup, shared = tx.execute(sql)[0]
    return int(dup or 0), int(shared or 0)


def _note_literals(spec: EventTable) -> dict[str, str]:
    """The notes an event row may carry (counted in the summary), as SQL literals: its datetime not used, its value
    dropped (the query joins a datetime note and a value note by '; ')."""
    value = spec.value or "value"
    return {"datetime_unparseable_note": sql_literal(f"{spec.start_datetime} unparseable: {spec.start_date} used"),
            "datetime_differs_note": sql_literal(f"{spec.start_datetime} ignored (its date is not {spec.start_date}): "
                                                 f"{spec.start_date} used"),
            "value_dropped_note": sql_literal(f"{value} not a 32-bit float (NaN, infinite or beyond +-3.4e38): "
                                              f"value dropped"),
            "value_unparseable_note": sql_literal(f"{value} not a number: value dropped")}


def events_sql(cdm: OmopCdm, spec: EventTable, options: ExtractOptions, duplicates: bool = False,
               staged: tuple[str, str, str | None] | None = None) -> tuple[str, dict]:
    """The extraction query for one clinical table, and its bind parameters.

    ``duplicates``: the table holds repeated records (duplicate_counts): rank the rows of each record.
    ``staged``: (person status, observation gaps) as tables made once (:func:`omop_staging.staged_sql`), read
    instead of computing both inside every table's query.
    """
    t = spec.table
    col = lambda c, **kw: cdm.col(t, c, "e", **kw) if c else "NULL"   # noqa: E731
    start_raw = cdm.raw(t, spec.start_date, "e")          # as held: missing and unparseable stay apart
    start_date = cdm.cast(col(spec.start_date), "DATE")
    person_id = cdm.cast(col("person_id"), "BIGINT")
    where, params = _filters(cdm, person_id, start_date, options)
    if spec.coded_only:
        where = (f"(COALESCE({cdm.cast(col(spec.concept), 'BIGINT')}, 0) <> 0 OR "
                 f"{col(spec.source_value, optional=True)} IS NOT NULL) AND {where}")
    status, _ = person_status_sql(cdm, options)
    dt_col = col(spec.start_datetime, optional=True) if spec.start_datetime else "NULL"
    dt_raw = cdm.raw(t, spec.start_datetime, "e", optional=True) if spec.start_datetime else "NULL"
    row_id = col(spec.row_id, optional=True) if spec.row_id else "NULL"
    id_cols = ["person_id", spec.row_id if spec.unique_id else None, spec.start_date, spec.concept,
               spec.source_concept, spec.visit]
    frag = {
        "table": cdm.qtable(t) + " ",
        "row_id": row_id,
        "person_id": person_id, "person_raw": cdm.raw(t, "person_id", "e"),
        "start_date": start_date, "start_raw": start_raw,
        "start_datetime": cdm.cast(dt_col, "TIMESTAMP") if dt_col != "NULL" else "CAST(NULL AS TIMESTAMP)",
        "start_datetime_raw": dt_raw,
        "end_date": cdm.cast(col(spec.end_date, optional=True), "DATE") if spec.end_date else "CAST(NULL AS DATE)",
        "concept_id": cdm.cast(col(spec.concept), "BIGINT"),
        "source_value": col(spec.source_value, optional=True),
        "source_concept_id": cdm.cast(col(spec.source_concept, optional=True), "BIGINT"),
        "value": (cdm.cast(col(spec.value, optional=True), "DOUBLE PRECISION") if spec.value
                  else "CAST(NULL AS DOUBLE PRECISION)"),
        "value_raw": cdm.raw(t, spec.value, "e", optional=True) if spec.value else "NULL",
        "visit_ref": cdm.cast(col(spec.visit, optional=True), "BIGINT") if spec.visit else "CAST(NULL AS BIGINT)",
        "unit_concept_id": (cdm.cast(col(spec.unit[0], optional=True), "BIGINT") if spec.unit
                            else "CAST(NULL AS BIGINT)"),
        "unit_source_value": col(spec.unit[1], optional=True) if spec.unit else "NULL",
        "cast_errors": _cast_errors(cdm, t, "e", [c for c in id_cols if c]),
        "dup_rank": (f"row_number() OVER (PARTITION BY {_record(cdm, spec)} ORDER BY {_first_row_order(cdm, t, 'e')})"
                     if duplicates else "1"),
        "where": where,
        "domain": f"'{spec.domain}'",
        "domain_source_prefix": "'SOURCE_" + spec.domain.upper() + "'",
        "duplicate_reason": sql_literal(f"duplicate {spec.row_id}"),
        "null_date_reason": sql_literal(f"null {spec.start_date}"),
        "bad_date_reason": sql_literal(f"unparseable {spec.start_date}"),
        "range_date_reason": sql_literal(f"{spec.start_date} outside the valid dates {options.window}"),
        "before_birth_reason": sql_literal(f"{spec.start_date} before birth"),
        "after_death_reason": sql_literal(f"{spec.start_date} more than {int(options.after_death_days)} days "
                                   f"after death"),
        **_note_literals(spec),
        "float32_max": repr(FLOAT32_MAX),
        "person_status": status if staged is None else f"SELECT * FROM {quote(staged[0])}",
        "observation_gaps": (render(load_sql("omop/observation_gaps.sql"), _op_cols(cdm)) if staged is None
                             else f"SELECT * FROM {quote(staged[1])}"),
        "visit_table": cdm.qtable("visit_occurrence"),
        "v_visit_occurrence_id": cdm.col("visit_occurrence", "visit_occurrence_id"),
        "v_person_id": cdm.col("visit_occurrence", "person_id"),
    }
    if staged is not None and staged[2] is not None:    # the concepts in use, under the concept table's names
        frag.update({"concept_table": quote(staged[2]), "c_concept_id": "concept_id",
                     "c_vocabulary_id": "vocabulary_id", "c_concept_code": "concept_code",
                     "unit_name": "uc.concept_name"})
    else:
        frag.update({"concept_table": cdm.qtable("concept"), "c_concept_id": cdm.col("concept", "concept_id"),
                     "c_vocabulary_id": cdm.col("concept", "vocabulary_id"),
                     "c_concept_code": cdm.col("concept", "concept_code"),
                     "unit_name": cdm.col("concept", "concept_name", "uc", optional=True)})
    return _used(render(load_sql("omop/events.sql"), frag), params)


def notes_sql(cdm: OmopCdm, options: ExtractOptions) -> tuple[str, dict]:
    """The clinical notes query (note.note_text), filtered and censored as the events; bad rows with a reason."""
    t = "note"
    col = lambda c, **kw: cdm.col(t, c, "e", **kw)   # noqa: E731
    person_id = cdm.cast(col("person_id"), "BIGINT")
    note_date = cdm.cast(col("note_date"), "DATE")
    where, params = _filters(cdm, person_id, note_date, options)
    status, _ = person_status_sql(cdm, options)
    frag = {
        "table": cdm.qtable(t) + " ", "row_id": col("note_id", optional=True),
        "person_id": person_id, "person_raw": cdm.raw(t, "person_id", "e"),
        "note_date": note_date, "note_date_raw": cdm.raw(t, "note_date", "e"),
        "note_datetime": (cdm.cast(col("note_datetime"), "TIMESTAMP") if "note_datetime" in cdm.columns(t)
                          else "CAST(NULL AS TIMESTAMP)"),
        "note_title": col("note_title", optional=True), "note_text": col("note_text"),
        "visit_ref": cdm.cast(col("visit_occurrence_id", optional=True), "BIGINT"),
        "cast_errors": _cast_errors(cdm, t, "e", ["person_id", "note_id", "note_date", "visit_occurrence_id"]),
        "where": where, "person_status": status,
        "range_date_reason": sql_literal(f"note_date outside the valid dates {options.window}"),
        "visit_table": cdm.qtable("visit_occurrence"),
        "v_visit_occurrence_id": cdm.col("visit_occurrence", "visit_occurrence_id"),
        "v_person_id": cdm.col("visit_occurrence", "person_id"),
    }
    return _used(render(load_sql("omop/notes.sql"), frag), params)


def observation_periods_sql(cdm: OmopCdm, options: ExtractOptions) -> tuple[str, dict]:
    """The observation periods query: typed dates, bad rows with a reason."""
    t = "observation_period"
    op = _op_cols(cdm)
    where, params = _filters(cdm, op["o_person_id"], None, options)
    frag = {"o_person_id": op["o_person_id"], "o_person_raw": cdm.raw(t, "person_id", "o"),
            "o_start": op["o_start"], "o_start_raw": cdm.raw(t, "observation_period_start_date", "o"),
            "o_end": op["o_end"], "o_end_raw": cdm.raw(t, "observation_period_end_date", "o"),
            "o_id": cdm.col(t, "observation_period_id" if "observation_period_id" in cdm.columns(t)
                            else "person_id", "o"),
            "cast_errors": _cast_errors(cdm, t, "o", ["person_id", "observation_period_start_date",
                                                     "observation_period_end_date"]),
            "range_reason": sql_literal(f"observation_period outside the valid dates {options.window}"),
            "op_table": op["op_table"], "where": where}
    return _used(render(load_sql("omop/observation_periods.sql"), frag), params)
