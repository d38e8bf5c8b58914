"""Every SQL template rendered for every OHDSI dialect, against golden files; the runtime translation hook.

tests/golden_sql/<dialect>/<dir>__<template>.sql holds each template rendered with fixed fragments
(tests/golden_sql/fragments.json: what the code builds on Eunomia in DuckDB and on the Synthea CDM in
PostgreSQL, recorded by ``python bench/sql_dialects.py --write-fragments``) and translated by
omop_behrt.db.dialects for postgresql, duckdb, spark, bigquery, snowflake, sql server, redshift and oracle; a
template a dialect cannot express holds the error instead. A change in rendering shows up as a diff here.
After an intended change, rewrite the golden files and review the diff:

    UPDATE_GOLDEN=1 pytest tests/test_sql_dialects.py

DuckDB and PostgreSQL run the translated SQL for real in the rest of the suite (Database translates every
template it runs); the tests at the end check that hook on Eunomia.
"""
from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pytest

from omop_behrt.db import dialects
from omop_behrt.db.database import Database, TemplateSql, load_sql, render

GOLDEN = Path(__file__).parent / "golden_sql"
SQL = Path(__file__).parents[1] / "sql"
FRAGMENTS = json.loads((GOLDEN / "fragments.json").read_text())
TEMPLATES = sorted(str(p.relative_to(SQL)) for p in SQL.glob("*/*.sql") if p.parent.name != "ddl")
CASES = [(t, d) for t in TEMPLATES for d in dialects.dialects_of(t)]


def placeholders(name: str) -> set[str]:
    body = "\n".join(line for line in load_sql(name).splitlines() if not line.lstrip().startswith("--"))
    return set(re.findall(r"\{([A-Za-z_]\w*)\}", body))


def rendered(name: str, target: str) -> tuple[str, str]:
    """The template with the fragments the code builds for ``target``'s kind of database, and how to read it.

    A template the fragments file does not know (newer than it) gets each placeholder as the quoted
    identifier of its name, so its text is still pinned.
    """
    side = "duckdb" if target == "duckdb" else "postgresql"
    frag = FRAGMENTS[side].get(name) or FRAGMENTS["duckdb"].get(name) or {}
    frag = {**{p: f'"{p}"' for p in placeholders(name)}, **frag}
    return render(load_sql(name), frag), ("duckdb" if target == "duckdb" else dialects.SOURCE)


def golden_text(name: str, target: str) -> str:
    sql, read = rendered(name, target)
    try:
        return dialects.translate(sql, target, read=read) + "\n"
    except dialects.DialectError as e:
        return f"-- does not translate: {e}\n"


def golden_path(name: str, target: str) -> Path:
    return GOLDEN / target.replace(" ", "_") / name.replace("/", "__")


@pytest.mark.parametrize("name,target", CASES, ids=[f"{d}:{t}" for t, d in CASES])
def test_golden(name, target):
    got, path = golden_text(name, target), golden_path(name, target)
    if os.environ.get("UPDATE_GOLDEN") == "1":
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(got)
    assert path.exists(), f"{path} missing: UPDATE_GOLDEN=1 pytest tests/test_sql_dialects.py writes it"
    assert got == path.read_text(), f"{name} for {target} renders differently from {path} (UPDATE_GOLDEN=1 to accept)"


def test_no_stale_golden_files():
    """Every golden file belongs to a template and a dialect it is translated for."""
    expected = {golden_path(t, d) for t, d in CASES}
    stale = sorted(str(p.relative_to(GOLDEN)) for p in GOLDEN.glob("*/*.sql") if p not in expected)
    if os.environ.get("UPDATE_GOLDEN") == "1":
        for p in stale:
            (GOLDEN / p).unlink()
        stale = []
    assert not stale, f"golden files without a template: {stale}"


def test_user_database_templates_translate_everywhere_they_can():
    """The counts the decision rests on (bench/sql_dialects.py): which templates each dialect cannot express."""
    failing = {d: sorted(t for t, dd in CASES if dd == d and golden_text(t, d).startswith("-- does not"))
               for d in dialects.TARGETS}
    assert failing["duckdb"] == failing["postgresql"] == failing["spark"] == failing["snowflake"] == []
    arrays = ["cohorts/first_occurrence.sql", "report/concept_names.sql", "omop/concept_names_by_id.sql",
              "tasks/plp_labels.sql"]
    for d in ("sql server", "oracle", "redshift"):   # a bound list needs an array type these lack
        assert set(arrays) <= set(failing[d]), d
    assert "omop/events.sql" in failing["bigquery"] and len(failing["bigquery"]) == 2


def test_binds_and_quoted_identifiers_survive():
    sql = render(load_sql("cohorts/read_cohort.sql"), FRAGMENTS["postgresql"]["cohorts/read_cohort.sql"])
    for target in ("postgresql", "spark", "bigquery", "snowflake", "oracle"):
        out = dialects.translate(sql, target)
        assert ":cohort_definition_id" in out, target
        assert re.search(r'["`]cohort["`]', out), target
    delete = render(load_sql("cohorts/delete_cohort.sql"), FRAGMENTS["postgresql"]["cohorts/delete_cohort.sql"])
    out = dialects.translate(delete, "sql server")
    assert "[cohort]" in out and ":cohort_definition_id" in out


def test_errors_name_the_target_and_the_template():
    with pytest.raises(dialects.DialectError, match=r"unsupported target database 'db2'.*postgresql"):
        dialects.translate("SELECT 1", "db2")
    with pytest.raises(dialects.DialectError, match=r"SQL template vocab/x\.sql does not translate to postgresql"):
        dialects.translate(TemplateSql("SELECT FROM WHERE (", "vocab/x.sql"), "postgresql")
    assert dialects.target_name("mssql") == "sql server" and dialects.target_name("postgres") == "postgresql"


def test_local_templates_are_duckdb_only():
    """Templates over local Parquet / Arrow (vocabulary mapping, Table 1, the leakage check) run on DuckDB only."""
    assert dialects.dialects_of("vocab/keys.sql") == ("duckdb",)
    assert dialects.dialects_of("export/upsert_model_postgresql.sql") == ("postgresql",)
    assert len(dialects.dialects_of("omop/events.sql")) == 8
    assert set(dialects.LOCAL) <= set(TEMPLATES) and set(dialects.POSTGRESQL_ONLY) <= set(TEMPLATES)


def test_database_runs_templates_as_written(eunomia_db):
    """DuckDB runs a template as written (DuckDB and PostgreSQL share the templates' dialect): no sqlglot parse on
    the run path, and the rows are those of the sqlglot round trip's SQL."""
    db = Database.connect(eunomia_db)
    sql = render(load_sql("omop/observed.sql"), FRAGMENTS["duckdb"]["omop/observed.sql"])
    assert isinstance(sql, TemplateSql) and sql.template == "omop/observed.sql"
    dialects._translate.cache_clear()
    a = db.query(sql)
    assert dialects._translate.cache_info().misses == 0
    assert db.translated(sql) is sql
    round_trip = db.query(dialects.translate(sql, "duckdb", read="duckdb"))
    assert a.num_rows == round_trip.num_rows == 5343     # persons with an observation period
    assert a.sort_by("person_id").equals(round_trip.sort_by("person_id"))
    assert db.translated("SELECT 1") == "SELECT 1"
    db.close()
