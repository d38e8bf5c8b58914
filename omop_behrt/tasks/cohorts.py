"""Index dates: read from an OHDSI cohort table, a CSV/DataFrame or MEDS labels; cohorts built in SQL.

An *index table* is the one shape everything downstream takes:
``cohort_definition_id int64, subject_id int64, index_date timestamp[us]`` (one row per cohort entry).
Cohort building runs inside the CDM's database (SQL in ``sql/cohorts/``) and writes an OHDSI cohort table in
the results schema, never in the CDM schema unless asked.
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import pyarrow as pa
import pyarrow.compute as pc

from omop_behrt.db.database import Database, SourceError, check_identifier, load_sql, quote, render

#: Where cohort tables are written and read unless a results schema is named (OHDSI's convention), for
#: every stage: cohort building, extract --cohort-id, embed, task (defined in choices.py, for the parser).
from omop_behrt.choices import RESULTS_SCHEMA

INDEX_SCHEMA = pa.schema([pa.field("cohort_definition_id", pa.int64()), pa.field("subject_id", pa.int64()),
                          pa.field("index_date", pa.timestamp("us"))])

# Where a concept can occur: table, concept column, start date column.
_OCCURRENCE_TABLES = {"condition": ("condition_occurrence", "condition_concept_id", "condition_start_date"),
                      "drug": ("drug_exposure", "drug_concept_id", "drug_exposure_start_date"),
                      "procedure": ("procedure_occurrence", "procedure_concept_id", "procedure_date"),
                      "measurement": ("measurement", "measurement_concept_id", "measurement_date"),
                      "observation": ("observation", "observation_concept_id", "observation_date"),
                      "device": ("device_exposure", "device_concept_id", "device_exposure_start_date")}


def check_index(index: pa.Table, what: str = "index table") -> pa.Table:
    """``index`` as :data:`INDEX_SCHEMA` (cohort_definition_id, subject_id, index_date), or a ValueError naming the
    missing column, the column that cannot be cast, or the first row (1-based) holding a null: an entry without a
    person, a date or a cohort is bad input, not a row to embed as "no history"."""
    missing = [n for n in INDEX_SCHEMA.names if n not in index.column_names]
    if missing:
        raise ValueError(f"{what}: column(s) {missing} missing; expected {INDEX_SCHEMA.names} "
                         f"(columns present: {index.column_names})")
    index = index.select(INDEX_SCHEMA.names)
    for f in INDEX_SCHEMA:
        try:
            index = index.set_column(index.schema.get_field_index(f.name), f, index[f.name].cast(f.type))
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError) as e:
            raise ValueError(f"{what}: column {f.name!r} ({index[f.name].type}) cannot be read as "
                             f"{f.type}: {e}") from None
    for name in INDEX_SCHEMA.names:
        col = index[name]
        if col.null_count:
            row = pc.index(pc.is_null(col), True).as_py()
            raise ValueError(f"{what}: row {row + 1}: {name} is null ({col.null_count} null in all; every entry "
                             f"needs a cohort_definition_id, a subject_id and an index_date)")
    return index


def _index_table(subject_id, index_date, cohort_definition_id=0, what: str = "index dates") -> pa.Table:
    t = pa.table({"subject_id": subject_id, "index_date": index_date})
    try:
        ids = t["subject_id"].cast(pa.int64())
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as e:
        raise ValueError(f"{what}: subject_id must be integers: {e}") from None
    dates = t["index_date"]
    if pa.types.is_string(dates.type) or pa.types.is_large_string(dates.type):
        try:
            dates = pc.strptime(dates, format="%Y-%m-%d", unit="us", error_is_null=False)
        except pa.ArrowInvalid as e:
            raise ValueError(f"{what}: index_date must be dates as YYYY-MM-DD: {e}") from None
    try:
        dates = dates.cast(pa.timestamp("us"))
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as e:
        raise ValueError(f"{what}: index_date must be a date or timestamp: {e}") from None
    for name, col in (("subject_id", ids), ("index_date", dates)):
        if col.null_count:
            raise ValueError(f"{what}: column {name!r} has {col.null_count} empty values")
    cid = cohort_definition_id if not isinstance(cohort_definition_id, int) else \
        pa.array([cohort_definition_id] * t.num_rows, pa.int64())
    return pa.table({"cohort_definition_id": cid, "subject_id": ids, "index_date": dates}, schema=INDEX_SCHEMA)


def index_dates_from_frame(frame, cohort_definition_id: int = 0) -> pa.Table:
    """From a pandas DataFrame or Arrow table with (subject_id, index_date)."""
    t = frame if isinstance(frame, pa.Table) else pa.Table.from_pandas(frame, preserve_index=False)
    for need in ("subject_id", "index_date"):
        if need not in t.column_names:
            raise ValueError(f"index dates: column {need!r} is missing; columns present: {t.column_names}")
    cid = t["cohort_definition_id"].cast(pa.int64()) if "cohort_definition_id" in t.column_names \
        else cohort_definition_id
    return _index_table(t["subject_id"], t["index_date"], cid)


def _separator(path: Path) -> str:
    """The index-date CSV's field separator, from its header line (:func:`header_separator`)."""
    from omop_behrt.db.cdm_exports import header_separator
    try:
        with open(path, "rb") as f:
            head = f.readline().decode("utf-8-sig", "replace")
    except OSError:
        return ","          # the read that follows names the file
    return header_separator(head, ("subject_id", "index_date"))


def index_dates_from_csv(path: str | Path, cohort_definition_id: int = 0) -> pa.Table:
    """From a CSV (',', ';', tab or '|' separated) whose header names subject_id and index_date (YYYY-MM-DD or a
    timestamp)."""
    import pyarrow.csv as pcsv
    path = Path(path)
    try:
        t = pcsv.read_csv(path, parse_options=pcsv.ParseOptions(delimiter=_separator(path)),
                          convert_options=pcsv.ConvertOptions(column_types={"index_date": pa.string()}))
    except (pa.ArrowInvalid, FileNotFoundError) as e:
        raise ValueError(f"{path}: cannot read index dates: {e}") from None
    for need in ("subject_id", "index_date"):
        if need not in t.column_names:
            raise ValueError(f"{path}: column {need!r} is missing; header has {t.column_names}")
    dates = t["index_date"]
    parsed = pc.strptime(dates, format="%Y-%m-%d", unit="us", error_is_null=True)
    bad = pc.and_(pc.is_null(parsed), pc.is_valid(dates))
    if pc.any(bad).as_py():
        try:
            parsed = dates.cast(pa.timestamp("us"))
        except pa.ArrowInvalid:
            row = pc.index(bad, True).as_py()
            raise ValueError(f"{path}: row {row + 2}: index_date {dates[row].as_py()!r} is not a date "
                             f"(expected YYYY-MM-DD)") from None
    cid = t["cohort_definition_id"] if "cohort_definition_id" in t.column_names else cohort_definition_id
    return _index_table(t["subject_id"], parsed, cid, str(path))


def index_dates_from_meds_labels(path: str | Path, cohort_definition_id: int = 0) -> pa.Table:
    """From MEDS label files (subject_id, prediction_time): a parquet file or a folder of them.

    A task's ``labels.parquet`` (subject_id, index_date) is read too, so extraction can be censored at a task's
    index dates (``extract --index-dates task/labels.parquet``).
    """
    import pyarrow.dataset as ds
    t = ds.dataset(str(path), format="parquet").to_table()
    time = "prediction_time" if "prediction_time" in t.column_names or "index_date" not in t.column_names \
        else "index_date"
    for need in ("subject_id", time):
        if need not in t.column_names:
            raise ValueError(f"{path}: MEDS label column {need!r} is missing (or a task's index_date); columns "
                             f"present: {t.column_names}")
    return _index_table(t["subject_id"], t[time], cohort_definition_id, str(path))


class CohortTable:
    """An OHDSI cohort table in a database's results schema (default :data:`RESULTS_SCHEMA`)."""

    def __init__(self, source: "str | Path | Database", results_schema: str | None = None,
                 cohort_table: str = "cohort", read_only: bool = True):
        self.db = Database.connect(source, read_only=read_only)
        self.schema = check_identifier(results_schema or RESULTS_SCHEMA, "results schema name")
        self.table = check_identifier(cohort_table, "cohort table name")

    def resolve(self, columns: tuple[str, ...] = ("cohort_definition_id", "subject_id", "cohort_start_date")
                ) -> tuple[str, dict[str, str]]:
        """The quoted table and {column: quoted column as stored}; a clear error when either is missing."""
        schemas = self.db.schemas()
        stored = self.db.tables(self.schema).get(self.table.lower()) if self.schema in schemas else None
        if stored is None:
            where = "" if self.schema in schemas else f" (no schema {self.schema})"
            named = (f" --results-schema {self.schema}" * (self.schema != RESULTS_SCHEMA)
                     + f" --cohort-table {self.table}" * (self.table != "cohort"))
            raise SourceError(
                f"cohort table {self.schema}.{self.table} not found in {self.db.description}{where}; create it with "
                f"`omop-behrt cohort first-occurrence|min-visits --source ... --cohort-id N{named}` (in Python: "
                f"cohorts.first_occurrence_cohort), or name the schema and table holding it (--results-schema, "
                f"--cohort-table)")
        cols = self.db.columns(self.schema, stored)
        missing = [c for c in columns if c not in cols]
        if missing:
            raise SourceError(f"{self.schema}.{stored} is not a cohort table: no column {missing[0]} "
                              f"(columns: {', '.join(cols)})")
        return self.db.qualify(self.schema, stored), {c: quote(cols[c], "column name") for c in columns}

    def read(self, cohort_definition_id: int) -> pa.Table:
        """The entries of one cohort as an index table; error if the cohort has none."""
        table, cols = self.resolve()
        frag = {"cohort_table": table, **{f"c_{c}": q for c, q in cols.items()}}
        t = self.db.query(render(load_sql("cohorts/read_cohort.sql"), frag),
                          {"cohort_definition_id": int(cohort_definition_id)}, INDEX_SCHEMA)
        if t.num_rows == 0:
            raise SourceError(f"cohort {cohort_definition_id} has no rows in {table}")
        return t


def _writable_results(cdm, results_schema: str | None, allow_cdm_schema: bool) -> str:
    schema = check_identifier(results_schema or RESULTS_SCHEMA, "results schema name")
    if schema == cdm.cdm_schema and not allow_cdm_schema:
        raise ValueError(f"refusing to write a cohort table into the CDM schema {schema!r}; pass another "
                         f"results schema or allow_cdm_schema=True (--allow-cdm-schema)")
    return schema


def _prepare_cohort_table(cdm, schema: str, cohort_table: str) -> str:
    """Create the results schema and cohort table if needed; the table, quoted as stored (its shape checked)."""
    db = cdm.db
    check_identifier(cohort_table, "cohort table name")
    if schema not in db.schemas():
        db.execute(f"CREATE SCHEMA IF NOT EXISTS {quote(schema, 'schema name')}")
    stored = db.tables(schema).get(cohort_table.lower(), cohort_table)
    db.execute(render(load_sql("cohorts/create_cohort_table.sql"), {"cohort_table": db.qualify(schema, stored)}))
    try:
        qualified, _ = CohortTable(db, schema, stored).resolve(
            ("cohort_definition_id", "subject_id", "cohort_start_date", "cohort_end_date"))
    except SourceError as e:
        raise SourceError(f"existing table {e}; choose another cohort table name") from None
    return qualified


def _write_cohort(cdm, schema: str, cohort_table: str, cohort_definition_id: int, sql: str, fragments: dict,
                  params: dict) -> int:
    """Create the cohort table if needed and replace the cohort's rows, in one transaction (one writer of the
    cohort table at a time on PostgreSQL, so two runs never leave a cohort's rows twice)."""
    db = cdm.db
    qualified = _prepare_cohort_table(cdm, schema, cohort_table)
    params = dict(params, cohort_definition_id=int(cohort_definition_id))
    with db.transaction() as tx:
        if db.dialect == "postgresql":
            tx.execute("SELECT pg_advisory_xact_lock(hashtext(:key))",
                       {"key": f"omop_behrt.cohort {qualified}"})
        tx.execute(render(load_sql("cohorts/delete_cohort.sql"), {"cohort_table": qualified}),
                   {"cohort_definition_id": params["cohort_definition_id"]})
        tx.execute(render(sql, {"cohort_table": qualified, **fragments}), params)
    return int(db.scalar(f"SELECT COUNT(*) FROM {qualified} WHERE cohort_definition_id = :c",
                         {"c": int(cohort_definition_id)}))


def occurrences_sql(cdm, domains: Sequence[str] | None = None, concepts: str | None = None) -> str:
    """``SELECT person_id, start_date`` over the domain tables the CDM has (UNION ALL), optionally only rows
    whose concept is in the subquery ``concepts``; the shared base of cohorts and outcomes."""
    parts = []
    for d in domains or list(_OCCURRENCE_TABLES):
        if d not in _OCCURRENCE_TABLES:
            raise ValueError(f"unknown domain {d!r}; expected some of {list(_OCCURRENCE_TABLES)}")
        table, concept, start = _OCCURRENCE_TABLES[d]
        if not cdm.has_table(table):
            continue
        where = f" WHERE CAST({cdm.col(table, concept, 'e')} AS BIGINT) IN ({concepts})" if concepts else ""
        parts.append(f"SELECT CAST({cdm.col(table, 'person_id', 'e')} AS BIGINT) AS person_id, "
                     f"CAST({cdm.col(table, start, 'e')} AS DATE) AS start_date FROM {cdm.qtable(table)} e{where}")
    if not parts:
        raise SourceError(f"none of the domain tables {list(domains or _OCCURRENCE_TABLES)} is in the CDM")
    return " UNION ALL ".join(parts)


def first_occurrence_cohort(source, cohort_definition_id: int, concept_ids: Sequence[int], *,
                            descendants: bool = True, domains: Sequence[str] | None = None,
                            cdm_schema: str | None = None, vocab_schema: str | None = None,
                            results_schema: str | None = None, cohort_table: str = "cohort",
                            allow_cdm_schema: bool = False) -> int:
    """Write the cohort "first occurrence of any of these concepts (with descendants)"; returns its size."""
    from omop_behrt.db.cdm import OmopCdm
    cdm = OmopCdm(Database.connect(source, read_only=False), cdm_schema, vocab_schema)
    schema = _writable_results(cdm, results_schema, allow_cdm_schema)
    occurrences = occurrences_sql(cdm, domains, "SELECT concept_id FROM wanted")
    if descendants:
        cdm.require("concept_ancestor")
    fragments = {
        "occurrences": occurrences,
        "concept_ancestor": cdm.qtable("concept_ancestor") if descendants else cdm.qtable("concept"),
        "ca_descendant": cdm.col("concept_ancestor", "descendant_concept_id") if descendants
        else cdm.col("concept", "concept_id"),
        "ca_ancestor": cdm.col("concept_ancestor", "ancestor_concept_id") if descendants
        else cdm.col("concept", "concept_id"),
        "observation_period": cdm.qtable("observation_period"),
        "op_person_id": cdm.col("observation_period", "person_id"),
        "op_start": cdm.col("observation_period", "observation_period_start_date"),
        "op_end": cdm.col("observation_period", "observation_period_end_date")}
    return _write_cohort(cdm, schema, cohort_table, cohort_definition_id, load_sql("cohorts/first_occurrence.sql"),
                         fragments, {"concept_ids": [int(c) for c in concept_ids], "descendants": bool(descendants)})


def min_visits_cohort(source, cohort_definition_id: int, min_visits: int, *, visits: str = "visit_occurrence",
                      cdm_schema: str | None = None, results_schema: str | None = None,
                      cohort_table: str = "cohort", allow_cdm_schema: bool = False) -> int:
    """Write the cohort "persons with >= N visits" (index = the N-th visit); returns its size.

    ``visits="visit_occurrence"`` counts CDM visits; ``visits="days"`` counts distinct days with any
    condition, drug, procedure, measurement or observation (for CDMs such as Eunomia whose events rarely link
    to a visit; the same (person, day) rule the adapter uses to rebuild visits).
    """
    from omop_behrt.db.cdm import OmopCdm
    if int(min_visits) < 1:
        raise ValueError(f"min_visits must be >= 1, got {min_visits}")
    cdm = OmopCdm(Database.connect(source, read_only=False), cdm_schema)
    schema = _writable_results(cdm, results_schema, allow_cdm_schema)
    if visits == "visit_occurrence":
        t = "visit_occurrence"
        v = (f"SELECT CAST({cdm.col(t, 'person_id', 'e')} AS BIGINT) AS person_id, "
             f"CAST({cdm.col(t, 'visit_start_date', 'e')} AS DATE) AS start_date FROM {cdm.qtable(t)} e")
    elif visits == "days":
        v = ("SELECT DISTINCT person_id, start_date FROM ("
             + occurrences_sql(cdm, ("condition", "drug", "procedure", "measurement", "observation")) + ") d")
    else:
        raise ValueError(f"visits must be 'visit_occurrence' or 'days', got {visits!r}")
    return _write_cohort(cdm, schema, cohort_table, cohort_definition_id, load_sql("cohorts/min_visits.sql"),
                         {"visits": v}, {"min_visits": int(min_visits)})


def from_atlas(definition: "str | Path | dict", *, cohort_id: int | None = None, name: str | None = None):
    """An ATLAS/CIRCE cohort definition (file, JSON text or dict): see :func:`omop_behrt.tasks.atlas.from_atlas`; its
    ``generate(source)`` writes the cohort like the builders above, and tasks/embedding take it as a cohort."""
    from omop_behrt.tasks.atlas import from_atlas as _from_atlas
    return _from_atlas(definition, cohort_id=cohort_id, name=name)
