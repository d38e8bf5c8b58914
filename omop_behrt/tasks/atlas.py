"""ATLAS / CIRCE cohort definitions generated inside the CDM's database, through OHDSI's own SQL.

OHDSI studies exchange their populations as CIRCE JSON (what ATLAS exports and the Phenotype Library holds).
``ohdsi-circepy`` builds OHDSI SQL from it and its ``sqlrender`` translates that SQL to the database's dialect,
as every OHDSI network site runs it; this module adds what a site needs around it: a clear error for a bad
definition, a CDM whose columns are mistyped or upper-case (Eunomia's are), generation in one transaction per
cohort (idempotent per cohort id, one writer at a time), and counts with inclusion-rule attrition.
"""
from __future__ import annotations

import csv
import json
import re
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

from omop_behrt.tasks.cohorts import RESULTS_SCHEMA, _prepare_cohort_table, _writable_results
from omop_behrt.db.database import Database, SourceError, check_identifier, load_sql, quote, render, statements
from omop_behrt.db.dialects import translate_ohdsi
from omop_behrt.tasks.circe_cdm import VIEW_SCHEMA, CdmViews, has_delta, session_views, tables_used, without_delta

#: CIRCE criteria that ohdsi-circepy builds SQL for (a definition naming another one is refused by name).
CRITERIA = ("ConditionOccurrence", "ConditionEra", "Death", "DeviceExposure", "DoseEra", "DrugEra", "DrugExposure",
            "Episode", "LocationRegion", "Measurement", "Observation", "ObservationPeriod", "PayerPlanPeriod",
            "ProcedureOccurrence", "Specimen", "VisitDetail", "VisitOccurrence")

#: the sqlrender target for each database dialect (SQLAlchemy's dialect names on the left)
SQLRENDER_DIALECTS = {"duckdb": "duckdb", "postgresql": "postgresql", "mssql": "sql server", "oracle": "oracle",
                      "redshift": "redshift", "snowflake": "snowflake", "bigquery": "bigquery", "spark": "spark",
                      "databricks": "spark", "sqlite": "sqlite"}

def _version(text: str) -> tuple[int, ...]:
    return tuple(int(p) for p in re.findall(r"\d+", text)[:3])


try:
    from importlib.metadata import version as _dist_version
    _CIRCEPY_VERSION = _version(_dist_version("ohdsi-circepy"))
except Exception:  # not installed: sql() fails on the import with its own message
    _CIRCEPY_VERSION = (0,)

#: where the generating transaction puts its typed views of the CDM (dropped before it commits)


class AtlasError(ValueError):
    """A cohort definition that cannot be generated; the message names the cohort and the field."""


@dataclass(frozen=True)
class AtlasCohort:
    """One CIRCE cohort definition: its JSON, a name, its default cohort id, and where it came from."""

    name: str
    definition: dict
    cohort_id: int | None = None
    origin: str = "<json>"

    @property
    def label(self) -> str:
        """How messages name it: ``cohort 77 "GI bleeding" (77.json)``."""
        cid = f"cohort {self.cohort_id} " if self.cohort_id is not None else "cohort "
        return f'{cid}"{self.name}" ({self.origin})'

    def digest(self) -> str:
        """SHA-256 of the definition's canonical JSON: what a task or a resumed run records to know it is the same."""
        import hashlib
        return hashlib.sha256(json.dumps(self.definition, sort_keys=True).encode()).hexdigest()

    def expression(self):
        """The definition as circepy's CohortExpression, after our own checks (circepy's errors are often opaque)."""
        from circe.api import cohort_expression_from_json
        _check_definition(self.definition, self.label)
        try:
            return cohort_expression_from_json(json.dumps(self.definition))
        except ValueError as e:
            raise AtlasError(f"{self.label}: not a valid CIRCE cohort definition: {_pydantic_first(e)}") from None

    def sql(self, dialect: str = "postgresql", *, cohort_definition_id: int | None = None, cdm_schema: str = "cdm",
            vocab_schema: str | None = None, results_schema: str = RESULTS_SCHEMA, cohort_table: str = "cohort",
            attrition: bool = True, temp_schema: str | None = None) -> list[str]:
        """The OHDSI SQL that generates this cohort, translated to ``dialect`` (a sqlrender or SQLAlchemy name) and
        split into statements: what `generate` runs, and what a site on another engine can run itself.

        ``temp_schema``: where engines without temporary tables (Spark, BigQuery, ...) create CIRCE's working
        tables (sqlrender's temp emulation schema); the results schema when not given, never the CDM's."""
        from circe.api import build_cohort_query
        from circe.cohortdefinition import BuildExpressionQueryOptions
        from circe import sqlrender
        target = SQLRENDER_DIALECTS.get(dialect, dialect)
        if target not in sqlrender.get_supported_dialects():
            raise ValueError(f"unknown SQL dialect {dialect!r}; expected one of "
                             f"{sorted(sqlrender.get_supported_dialects())}")
        if target == "bigquery" and _CIRCEPY_VERSION <= (0, 3, 0):
            raise ValueError("ohdsi-circepy 0.3.0 cannot translate cohort SQL to BigQuery: its string-"
                             "concatenation patterns search the whole script super-linearly and did not finish "
                             "in 10 minutes on Phenotype Library definition 77; translate for another dialect, or "
                             "with OHDSI's SqlRender (R/Java)")
        cid = self._id(cohort_definition_id)
        schema = quote(check_identifier(results_schema, "results schema name"))
        options = BuildExpressionQueryOptions()
        options.cdm_schema = cdm_schema
        options.vocabulary_schema = vocab_schema or cdm_schema
        options.result_schema = schema
        options.target_table = f"{schema}.{quote(cohort_table, 'cohort table name')}"
        options.cohort_id = cid
        options.generate_stats = attrition
        expression = self.expression()
        try:
            ohdsi_sql = build_cohort_query(expression, options)
        except Exception as e:  # circepy raises AttributeError/KeyError on shapes it does not expect
            raise AtlasError(f"{self.label}: ohdsi-circepy cannot build SQL for it: {type(e).__name__}: {e}"
                             ) from None
        rendered = sqlrender.render(ohdsi_sql, results_database_schema=schema, cdm_database_schema=cdm_schema,
                                    vocabulary_database_schema=options.vocabulary_schema)
        temp = check_identifier(temp_schema or results_schema, "temp schema name")
        return [s for s in sqlrender.split_sql(translate_ohdsi(rendered, target, temp)) if s.strip()]

    def generate(self, source: "str | Path | Database", cohort_definition_id: int | None = None, **kwargs) -> int:
        """Write the cohort into ``<results_schema>.<cohort_table>``; returns its number of entries.

        Keywords as :func:`generate_cohort_set`. Re-running replaces the cohort's rows.
        """
        return generate_cohort_set(source, [self], cohort_ids=[cohort_definition_id] if cohort_definition_id
                                   is not None else None, **kwargs)[0].entries

    def _id(self, cohort_definition_id: int | None) -> int:
        cid = cohort_definition_id if cohort_definition_id is not None else self.cohort_id
        if cid is None:
            raise AtlasError(f"{self.label}: no cohort id: pass one (--cohort-id, cohort_definition_id=) or name "
                             f"the file after it (77.json)")
        return int(cid)


@dataclass
class Generation:
    """What generating one cohort gave: entries, persons, seconds, and attrition when the definition has rules."""

    cohort_id: int
    name: str
    entries: int
    persons: int
    seconds: float
    #: persons with a qualifying event before any inclusion rule (CIRCE's base count), None without rules
    base_persons: int | None = None
    #: per inclusion rule, in order: {"rule", "persons_meeting", "persons_remaining"} (remaining: all rules so far)
    attrition: list[dict] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


def from_atlas(definition: "str | Path | dict", *, cohort_id: int | None = None, name: str | None = None
               ) -> AtlasCohort:
    """A cohort definition from a CIRCE JSON file, JSON text or a dict (as ATLAS exports it).

    The cohort id defaults to a numeric file name (``77.json`` -> 77, the Phenotype Library's convention), the
    name to the definition's own ``name``/``title`` or the file name.
    """
    origin = "<json>"
    if isinstance(definition, dict):
        data = definition
    else:
        text = str(definition)
        path = Path(text) if not text.lstrip().startswith("{") and len(text) < 4096 else None
        if path is not None:
            if not path.is_file():
                raise AtlasError(f"cohort definition {path}: no such file (expected ATLAS/CIRCE cohort JSON)")
            origin, text = str(path), path.read_text(encoding="utf-8-sig")
            if cohort_id is None and path.stem.isdigit():
                cohort_id = int(path.stem)
            name = name or path.stem
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise AtlasError(f"cohort definition {origin}: not JSON: {e.msg} at line {e.lineno} column {e.colno}"
                             ) from None
    if isinstance(data, dict) and isinstance(data.get("expression"), dict):   # WebAPI's wrapper
        name = name or data.get("name")
        data = data["expression"]
    if not isinstance(data, dict):
        raise AtlasError(f"cohort definition {origin}: expected a JSON object with PrimaryCriteria, got "
                         f"{type(data).__name__}")
    name = name or data.get("name") or data.get("title") or "unnamed"
    return AtlasCohort(str(name), data, int(cohort_id) if cohort_id is not None else None, origin)


def read_cohort_set(path: "str | Path") -> list[AtlasCohort]:
    """A cohort set: a folder of ``<id>.json`` files, or a CSV with columns cohort_id, cohort_name and json
    (a path relative to the CSV; the Phenotype Library's ``cohorts/<id>.json`` when the column is absent)."""
    path = Path(path)
    if path.is_dir():
        files = sorted(path.glob("*.json"), key=lambda p: (not p.stem.isdigit(), int(p.stem) if p.stem.isdigit()
                                                            else 0, p.name))
        if not files:
            raise AtlasError(f"cohort set {path}: no .json cohort definitions in the folder")
        return [from_atlas(f) for f in files]
    if not path.is_file():
        raise AtlasError(f"cohort set {path}: no such folder or CSV file")
    with open(path, newline="", encoding="utf-8-sig") as fh:
        rows = list(csv.DictReader(fh))
    out = []
    for i, row in enumerate(rows, start=2):
        if not (row.get("cohort_id") or "").strip().isdigit():
            raise AtlasError(f"cohort set {path}: row {i}: cohort_id {row.get('cohort_id')!r} is not an integer "
                             f"(expected columns cohort_id, cohort_name, json)")
        cid = int(row["cohort_id"])
        rel = (row.get("json") or row.get("json_path") or "").strip() or f"cohorts/{cid}.json"
        f = path.parent / rel
        if not f.is_file():
            raise AtlasError(f"cohort set {path}: row {i}: cohort {cid}: definition {f} not found")
        out.append(from_atlas(f, cohort_id=cid, name=(row.get("cohort_name") or "").strip() or None))
    if not out:
        raise AtlasError(f"cohort set {path}: no rows")
    return out


def generate_cohort_set(source: "str | Path | Database", cohorts: Sequence[AtlasCohort], *,
                        cohort_ids: Sequence[int] | None = None, cdm_schema: str | None = None,
                        vocab_schema: str | None = None, results_schema: str | None = None,
                        cohort_table: str = "cohort", allow_cdm_schema: bool = False, attrition: bool = True,
                        progress: bool = False) -> list[Generation]:
    """Generate each cohort into ``<results_schema>.<cohort_table>`` inside the database (DuckDB, PostgreSQL,
    Spark), one transaction per cohort (Spark: one statement after another, the cohort table rewritten at the end):
    a failure leaves that cohort as it was, a re-run replaces its rows."""
    from omop_behrt.db.cdm import OmopCdm
    if cohort_ids is not None and len(cohort_ids) != len(cohorts):
        raise ValueError(f"{len(cohort_ids)} cohort ids for {len(cohorts)} cohort definitions")
    ids = [c._id(cohort_ids[i] if cohort_ids is not None else None) for i, c in enumerate(cohorts)]
    dup = {i for i in ids if ids.count(i) > 1}
    if dup:
        raise AtlasError(f"cohort set: cohort id {min(dup)} is given to more than one definition")
    for c in cohorts:       # every definition checked before anything is written; the error names the cohort
        c.expression()
    if not isinstance(source, Database) and "://" not in str(source) and not Path(source).exists():
        raise SourceError(f"{source}: no such CDM (a DuckDB file, a folder of exports or a SQLAlchemy URL)")
    db = Database.connect(source, read_only=False)
    try:
        return _generate(OmopCdm(db, cdm_schema, vocab_schema), cohorts, ids, results_schema, cohort_table,
                         allow_cdm_schema, attrition, progress)
    finally:
        if db is not source:     # opened here: closed here, so the next reader of a DuckDB file may open it
            db.close()


def _generate(cdm, cohorts: Sequence[AtlasCohort], ids: list[int], results_schema: str | None, cohort_table: str,
              allow_cdm_schema: bool, attrition: bool, progress: bool) -> list[Generation]:
    db = cdm.db
    for table in ("person", "observation_period", "concept"):     # every CIRCE cohort reads them
        cdm.require(table)
    if db.dialect not in VIEW_SCHEMA:
        raise SourceError(f"{db.description}: generating ATLAS cohorts runs on DuckDB, PostgreSQL and Spark; for "
                          f"{db.dialect}, run AtlasCohort.sql({db.dialect!r}) there")
    schema = _writable_results(cdm, results_schema, allow_cdm_schema)
    qualified = _prepare_cohort_table(cdm, schema, cohort_table)
    cohort_table = qualified.split(".")[1].strip('"')
    qschema = quote(schema, "schema name")
    for stmt in statements(render(load_sql("cohorts/create_inclusion_tables.sql"), {"schema": qschema})):
        db.execute(stmt)
    views = CdmViews(cdm)
    delta = db.dialect == "spark" and has_delta(db.spark)
    out = []
    bar = _progress(len(cohorts), progress)
    jobs = [(c, db.dialect, dict(cohort_definition_id=cid, cdm_schema=VIEW_SCHEMA[db.dialect], results_schema=schema,
                                 cohort_table=cohort_table, attrition=attrition)) for c, cid in zip(cohorts, ids)]
    for (cohort, cid), (circe_sql, built) in zip(zip(cohorts, ids), _translated(jobs)):
        t0 = time.perf_counter() - built
        used = tables_used(circe_sql, VIEW_SCHEMA[db.dialect])
        notes = [views.notes[t] for t in sorted(used) if t in views.notes]
        for note in notes:
            warnings.warn(f"{cohort.label}: {note}", stacklevel=2)
        rules = cohort.definition.get("InclusionRules") or []
        if db.dialect == "spark" and not delta:   # a plain Spark: CIRCE's working tables as Parquet tables
            circe_sql = [without_delta(stmt) for stmt in circe_sql]
        with db.transaction() as tx:
            if db.dialect == "postgresql":   # one generator of this cohort table at a time, released at commit
                tx.execute("SELECT pg_advisory_xact_lock(hashtext(:key))",
                           {"key": f"omop_behrt.cohort {qualified}"})
            for table in sorted(used):
                tx.execute_raw(views.create(table))
            tx.execute(render(load_sql("cohorts/delete_inclusion_rules.sql"), {"schema": qschema}),
                       {"cohort_definition_id": cid})
            for seq, rule in enumerate(rules):
                tx.execute(render(load_sql("cohorts/insert_inclusion_rule.sql"), {"schema": qschema}),
                           {"cohort_definition_id": cid, "rule_sequence": seq,
                            "name": str(rule.get("name") or f"rule {seq + 1}")[:255],
                            "description": str(rule["description"])[:1000] if rule.get("description") else None})
            for stmt in circe_sql:
                try:
                    tx.execute_raw(stmt)
                except Exception as e:  # the driver's own error types; re-raised naming the cohort
                    raise SourceError(f"{cohort.label}: generating it failed in {db.description}: "
                                      f"{_first_line(e)}") from None
            for table in sorted(used):
                tx.execute_raw(views.drop(table))
            if db.dialect == "spark":    # sqlrender's Spark SQL makes some CTEs session views, left behind
                for view in session_views(circe_sql):
                    tx.execute_raw(f"DROP VIEW IF EXISTS {view}")
        counts = db.query(render(load_sql("cohorts/cohort_counts.sql"), {"cohort_table": qualified}),
                          {"cohort_definition_id": cid})
        gen = Generation(cid, cohort.name, int(counts["entries"][0].as_py()), int(counts["persons"][0].as_py()),
                         time.perf_counter() - t0, warnings=notes)
        if attrition and rules:
            gen.base_persons, gen.attrition = _attrition(db, qschema, cid, [r.get("name") or "" for r in rules])
        out.append(gen)
        bar.update(1)
    bar.close()
    return out


def _sql_of(job: tuple) -> tuple[list[str], float]:
    cohort, dialect, kwargs = job
    t0 = time.perf_counter()
    return cohort.sql(dialect, **kwargs), time.perf_counter() - t0


def _translated(jobs: list[tuple]) -> Iterable[tuple[list[str], float]]:
    """Each cohort's translated SQL (and the seconds it took), in order. sqlrender's translation is pure-Python
    work of about 0.2-0.4 s per cohort, so a set of cohorts is translated in worker processes while the database
    runs the ones already translated."""
    import os
    workers = min(len(jobs) - 1, os.cpu_count() or 1)
    if workers < 2:
        yield from map(_sql_of, jobs)
        return
    import multiprocessing as mp
    from concurrent.futures import ProcessPoolExecutor
    with ProcessPoolExecutor(workers, mp_context=mp.get_context("spawn")) as pool:
        yield from pool.map(_sql_of, jobs)


def attrition_table(generations: Iterable[Generation]) -> str:
    """A plain-text table of counts per cohort and, under each, its inclusion-rule attrition."""
    lines = [f"{'cohort':>8}  {'entries':>9}  {'persons':>9}  {'seconds':>7}  name"]
    for g in generations:
        lines.append(f"{g.cohort_id:>8}  {g.entries:>9,}  {g.persons:>9,}  {g.seconds:>7.2f}  {g.name}")
        if g.attrition:
            lines.append(f"{'':>8}  qualifying persons before inclusion rules: {g.base_persons:,}")
            for i, a in enumerate(g.attrition, start=1):
                lines.append(f"{'':>8}  rule {i}: {a['rule']}: {a['persons_meeting']:,} meet it, "
                             f"{a['persons_remaining']:,} remain")
    return "\n".join(lines)


# -- checks ---------------------------------------------------------------------------------------
def _check_definition(d: dict, label: str) -> None:
    """The mistakes circepy reports badly (an AttributeError on None): the primary criteria, the criterion kinds,
    and that every CodesetId names a concept set of the definition."""
    pc = d.get("PrimaryCriteria")
    if not isinstance(pc, dict):
        raise AtlasError(f"{label}: field PrimaryCriteria is {'missing' if pc is None else 'not an object'} "
                         f"(expected {{\"CriteriaList\": [...], \"ObservationWindow\": {{...}}}})")
    if not isinstance(pc.get("CriteriaList"), list) or not pc["CriteriaList"]:
        raise AtlasError(f"{label}: field PrimaryCriteria.CriteriaList must be a non-empty list of criteria")
    if not isinstance(pc.get("ObservationWindow"), dict):
        raise AtlasError(f"{label}: field PrimaryCriteria.ObservationWindow is missing (expected "
                         f"{{\"PriorDays\": 0, \"PostDays\": 0}})")
    concept_sets = d.get("ConceptSets") or []
    if not isinstance(concept_sets, list):
        raise AtlasError(f"{label}: field ConceptSets must be a list")
    known = {cs.get("id") for cs in concept_sets if isinstance(cs, dict)}
    for where, crit in _criteria(d):
        if not isinstance(crit, dict) or len(crit) != 1:
            raise AtlasError(f"{label}: field {where}: expected one criterion, e.g. {{\"ConditionOccurrence\": "
                             f"{{...}}}}, got {json.dumps(crit)[:80]}")
        kind = next(iter(crit))
        if kind not in CRITERIA:
            raise AtlasError(f"{label}: field {where}: unsupported criterion {kind!r}; supported: "
                             f"{', '.join(CRITERIA)}")
    for where, value in _codeset_ids(d, ""):
        if value is not None and value not in known:
            raise AtlasError(f"{label}: field {where.lstrip('.')} = {value} names no concept set (ConceptSets ids: "
                             f"{sorted(k for k in known if k is not None)})")


def _criteria(d: dict) -> Iterable[tuple[str, Any]]:
    """(JSON path, criterion object) for every criterion slot of a definition, nested groups included."""
    pc = d.get("PrimaryCriteria") or {}
    for i, c in enumerate(pc.get("CriteriaList") or []):
        yield f"PrimaryCriteria.CriteriaList[{i}]", c
        yield from _nested(c, f"PrimaryCriteria.CriteriaList[{i}]")
    for i, c in enumerate(d.get("CensoringCriteria") or []):
        yield f"CensoringCriteria[{i}]", c
    if isinstance(d.get("AdditionalCriteria"), dict):
        yield from _group(d["AdditionalCriteria"], "AdditionalCriteria")
    for i, rule in enumerate(d.get("InclusionRules") or []):
        if isinstance(rule, dict) and isinstance(rule.get("expression"), dict):
            yield from _group(rule["expression"], f"InclusionRules[{i}].expression")


def _group(g: dict, where: str) -> Iterable[tuple[str, Any]]:
    for i, item in enumerate(g.get("CriteriaList") or []):
        if isinstance(item, dict):
            yield f"{where}.CriteriaList[{i}].Criteria", item.get("Criteria")
            yield from _nested(item.get("Criteria"), f"{where}.CriteriaList[{i}].Criteria")
    for i, sub in enumerate(g.get("Groups") or []):
        if isinstance(sub, dict):
            yield from _group(sub, f"{where}.Groups[{i}]")


def _nested(crit: Any, where: str) -> Iterable[tuple[str, Any]]:
    """A criterion's own CorrelatedCriteria group."""
    if isinstance(crit, dict) and len(crit) == 1:
        kind, body = next(iter(crit.items()))
        if isinstance(body, dict) and isinstance(body.get("CorrelatedCriteria"), dict):
            yield from _group(body["CorrelatedCriteria"], f"{where}.{kind}.CorrelatedCriteria")


def _codeset_ids(node: Any, where: str) -> Iterable[tuple[str, Any]]:
    if isinstance(node, dict):
        for k, v in node.items():
            if k.endswith("CodesetId") and not isinstance(v, (dict, list)):
                yield f"{where}.{k}", v
            else:
                yield from _codeset_ids(v, f"{where}.{k}")
    elif isinstance(node, list):
        for i, v in enumerate(node):
            yield from _codeset_ids(v, f"{where}[{i}]")


def _pydantic_first(e: Exception) -> str:
    """The first validation error of circepy's message, as 'field: problem'."""
    lines = [line.strip() for line in str(e).splitlines() if line.strip()]
    for i, line in enumerate(lines[:-1]):
        if "validation error" in line and i + 2 < len(lines):
            return f"field {lines[i + 1]}: {lines[i + 2].split(' [type=')[0]}"
    return lines[0] if lines else str(e)


def _attrition(db: Database, qschema: str, cid: int, names: list[str]) -> tuple[int, list[dict]]:
    """Persons meeting each rule and remaining after rules 1..k, from CIRCE's per-person rule masks."""
    rows = db.query(render(load_sql("cohorts/inclusion_result.sql"), {"schema": qschema}),
                    {"cohort_definition_id": cid}).to_pylist()
    base = sum(r["persons"] for r in rows)
    out = []
    for k, name in enumerate(names):
        bit, upto = 1 << k, (1 << (k + 1)) - 1
        out.append({"rule": name or f"rule {k + 1}",
                    "persons_meeting": sum(r["persons"] for r in rows if r["mask"] & bit),
                    "persons_remaining": sum(r["persons"] for r in rows if r["mask"] & upto == upto)})
    return base, out


def _first_line(e: Exception) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


def _progress(total: int, enabled: bool):
    from tqdm.auto import tqdm
    return tqdm(total=total, unit="cohort", desc="cohorts", disable=not enabled or total < 2)
