"""Build real CDM fixtures for tests: the official OHDSI DDL (5.3 / 5.4) filled with the Synthea subset."""
from __future__ import annotations

import os
import re
from pathlib import Path

import duckdb

DATA = Path(__file__).parent / "data"
SYNTHEA = DATA / "synthea_omop_1k"
PG_URL = os.environ.get("OMOP_BEHRT_TEST_PG", "postgresql+psycopg://postgres@127.0.0.1:5432/test")

# CDM 5.4 renamed these visit_occurrence columns; a 5.3 fixture gets the old names.
RENAMED_54_TO_53 = {"admitted_from_concept_id": "admitting_source_concept_id",
                    "admitted_from_source_value": "admitting_source_value",
                    "discharged_to_concept_id": "discharge_to_concept_id",
                    "discharged_to_source_value": "discharge_to_source_value"}


def ddl(version: str, dialect: str, schema: str) -> list[str]:
    """The official CREATE TABLE statements with the schema filled in."""
    if dialect == "duckdb":   # the package ships the DuckDB DDL (it types folder exports); tests read that copy
        from omop_behrt.db.database import load_sql
        text = load_sql(f"ddl/OMOPCDM_duckdb_{version}_ddl.sql")
    else:
        text = (DATA / "omop_cdm_ddl" / version / f"OMOPCDM_{dialect}_{version}_ddl.sql").read_text()
    text = "\n".join(line for line in text.splitlines() if not line.lstrip().startswith("--"))
    text = text.replace("@cdmDatabaseSchema", f'"{schema}"')
    return [s.strip() for s in text.split(";") if "CREATE TABLE" in s]


def synthea_tables(con: duckdb.DuckDBPyConnection) -> dict[str, str]:
    """{table: reader expression} for the Synthea subset CSVs (all columns as text)."""
    out = {}
    for f in sorted(SYNTHEA.glob("*.csv.gz")):
        out[f.name.split(".")[0].lower()] = (f"read_csv('{f}', header=true, all_varchar=true, "
                                             f"sample_size=-1, nullstr='')")
    return out


def build_duckdb_cdm(path: Path, version: str = "5.4", schema: str = "cdm") -> Path:
    """A DuckDB file with the official DDL of ``version`` in ``schema``, filled with the Synthea subset."""
    con = duckdb.connect(str(path))
    con.execute(f'CREATE SCHEMA IF NOT EXISTS "{schema}"')
    for stmt in ddl(version, "duckdb", schema):
        con.execute(stmt)
    for table, reader in synthea_tables(con).items():
        target = [r[0] for r in con.execute(
            "SELECT column_name FROM information_schema.columns WHERE table_schema=$s AND table_name=$t "
            "ORDER BY ordinal_position", {"s": schema, "t": table}).fetchall()]
        if not target:
            continue
        src_cols = {r[0] for r in con.execute(f"DESCRIBE SELECT * FROM {reader}").fetchall()}
        back = {v: k for k, v in RENAMED_54_TO_53.items()}
        pairs = [(c, c if c in src_cols else back.get(c)) for c in target]
        pairs = [(t, s) for t, s in pairs if s in src_cols]
        cols = ", ".join(f'"{t}"' for t, _ in pairs)
        sel = ", ".join(f'"{s}"' for _, s in pairs)
        con.execute(f'INSERT INTO "{schema}"."{table}" ({cols}) SELECT {sel} FROM {reader}')
    con.close()
    return path


def load_postgres_cdm(url: str, schema: str, version: str = "5.4") -> None:
    """Create ``schema`` in PostgreSQL from the official DDL and COPY the Synthea subset into it."""
    import sqlalchemy as sa
    engine = sa.create_engine(url)
    src = duckdb.connect()
    with engine.begin() as conn:
        conn.execute(sa.text(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE'))
        conn.execute(sa.text(f'CREATE SCHEMA "{schema}"'))
        for stmt in ddl(version, "postgresql", schema):
            conn.execute(sa.text(stmt))
    raw = engine.raw_connection()
    try:
        cur = raw.cursor()
        for table, reader in synthea_tables(src).items():
            cur.execute("SELECT column_name FROM information_schema.columns WHERE table_schema=%s AND "
                        "table_name=%s ORDER BY ordinal_position", (schema, table))
            target = [r[0] for r in cur.fetchall()]
            if not target:
                continue
            rel = src.sql(f"SELECT * FROM {reader}")
            cols = [c for c in target if c in rel.columns]
            rows = rel.select(*[duckdb.ColumnExpression(c) for c in cols]).fetchall()
            with cur.copy(f'COPY "{schema}"."{table}" ({", ".join(chr(34) + c + chr(34) for c in cols)}) '
                          f"FROM STDIN") as cp:
                for row in rows:
                    cp.write_row(row)
        raw.commit()
    finally:
        raw.close()
        engine.dispose()


def drop_postgres_schema(url: str, schema: str) -> None:
    import sqlalchemy as sa
    engine = sa.create_engine(url)
    with engine.begin() as conn:
        conn.execute(sa.text(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE'))
    engine.dispose()


def postgres_available(url: str = PG_URL) -> str | None:
    """None when the server answers, else the reason it does not."""
    import sqlalchemy as sa
    try:
        engine = sa.create_engine(url)
        with engine.connect():
            pass
        engine.dispose()
        return None
    except Exception as e:  # any driver error means "not available"
        return re.sub(r"\s+", " ", str(e))[:200]


def copy_with_nsaid_cohort(eunomia: Path, folder: Path, cohort_id: int = 1) -> Path:
    """A private copy of Eunomia in ``folder`` with cohort ``cohort_id`` in results.cohort = each person's first
    NSAID exposure (the demo's target; tests must not write into the session's shared copy)."""
    import shutil

    from omop_behrt.tasks import cohorts
    from omop_behrt.study.demo import NSAIDS
    dst = Path(folder) / "eunomia.duckdb"
    shutil.copy(eunomia, dst)
    cohorts.first_occurrence_cohort(dst, cohort_id, list(NSAIDS), domains=["drug"])
    return dst


def copy_duckdb_to_postgres(path: Path, url: str, schema: str, tables: list[str] | None = None) -> None:
    """Copy a DuckDB CDM's ``main`` tables into a PostgreSQL schema as they are stored: the same column types and
    the same column names (Eunomia's are UPPER-CASE and some of its numbers are text), through CSV and COPY."""
    import tempfile

    import sqlalchemy as sa
    pg_type = {"BIGINT": "BIGINT", "INTEGER": "INTEGER", "DOUBLE": "DOUBLE PRECISION", "DATE": "DATE",
               "TIMESTAMP": "TIMESTAMP", "VARCHAR": "TEXT", "FLOAT": "REAL"}
    src = duckdb.connect(str(path), read_only=True)
    names = tables or [r[0] for r in src.execute(
        "SELECT table_name FROM information_schema.tables WHERE table_schema = 'main' ORDER BY 1").fetchall()]
    engine = sa.create_engine(url)
    with engine.begin() as conn:
        conn.execute(sa.text(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE'))
        conn.execute(sa.text(f'CREATE SCHEMA "{schema}"'))
    raw = engine.raw_connection()
    try:
        cur = raw.cursor()
        with tempfile.TemporaryDirectory() as tmp:
            for t in names:
                cols = src.execute("SELECT column_name, data_type FROM information_schema.columns WHERE "
                                   "table_schema = 'main' AND table_name = $t ORDER BY ordinal_position",
                                   {"t": t}).fetchall()
                cur.execute(f'CREATE TABLE "{schema}"."{t}" ('
                            + ", ".join(f'"{c}" {pg_type.get(ty, "TEXT")}' for c, ty in cols) + ")")
                csv = Path(tmp) / f"{t}.csv"
                src.execute(f"COPY (SELECT * FROM main.\"{t}\") TO '{csv}' (FORMAT csv, HEADER false)")
                with open(csv, "rb") as fh, cur.copy(f'COPY "{schema}"."{t}" FROM STDIN (FORMAT csv)') as cp:
                    while chunk := fh.read(1 << 20):
                        cp.write(chunk)
        raw.commit()
    finally:
        raw.close()
        engine.dispose()
        src.close()


# -- a messy CDM: what real exports hold (tests/robustness/test_extract.py, tests/test_spark.py) ----------------
def _first(s: str, table: str, id_col: str, person: int) -> str:
    return f"(SELECT MIN({id_col}) FROM {s}.{table} WHERE person_id = {person})"


def corruption(s: str) -> list[str]:
    """What real exports hold, as SQL that runs on DuckDB and PostgreSQL alike (schema ``s``, Synthea 5.4 rows)."""
    co = f"{s}.condition_occurrence"
    return [
        # persons: a month 13 and a day 32 (birth known by year only), sentinel years 9999 and 1700, a second row
        f"UPDATE {s}.person SET month_of_birth = 13, birth_datetime = NULL WHERE person_id = 2",
        f"UPDATE {s}.person SET day_of_birth = 32, birth_datetime = NULL WHERE person_id = 3",
        f"UPDATE {s}.person SET year_of_birth = 9999, birth_datetime = NULL WHERE person_id = 4",
        f"UPDATE {s}.person SET year_of_birth = 1700, birth_datetime = NULL WHERE person_id = 5",
        f"INSERT INTO {s}.person (person_id, gender_concept_id, year_of_birth, month_of_birth, day_of_birth, "
        f"race_concept_id, ethnicity_concept_id) SELECT person_id, 8507, year_of_birth, month_of_birth, "
        f"day_of_birth, race_concept_id, ethnicity_concept_id FROM {s}.person WHERE person_id = 6",
        # an event 10 years before birth; a January event of a year-only birth year (kept: not before birth)
        f"UPDATE {co} SET condition_start_date = DATE '1960-01-01', condition_start_datetime = NULL "
        f"WHERE condition_occurrence_id = {_first(s, 'condition_occurrence', 'condition_occurrence_id', 8)}",
        f"UPDATE {s}.person SET birth_datetime = NULL, month_of_birth = NULL, day_of_birth = NULL WHERE person_id = 9",
        f"UPDATE {co} SET condition_start_date = DATE '2014-01-15', condition_start_datetime = NULL "
        f"WHERE condition_occurrence_id = {_first(s, 'condition_occurrence', 'condition_occurrence_id', 9)}",
        # person 7 died 2025-10-06: an event 8 months later (quarantined), one 14 days later (kept)
        f"UPDATE {co} SET condition_start_date = DATE '2026-06-01', condition_start_datetime = NULL "
        f"WHERE condition_occurrence_id = {_first(s, 'condition_occurrence', 'condition_occurrence_id', 7)}",
        f"UPDATE {co} SET condition_start_date = DATE '2025-10-20', condition_start_datetime = NULL "
        f"WHERE condition_occurrence_id = (SELECT MAX(condition_occurrence_id) FROM {co} WHERE person_id = 7)",
        # sentinel datetimes on valid dates
        f"UPDATE {s}.measurement SET measurement_datetime = TIMESTAMP '9999-12-31 00:00:00' WHERE measurement_id IN "
        f"(SELECT measurement_id FROM {s}.measurement WHERE person_id >= 20 ORDER BY measurement_id LIMIT 3)",
        f"UPDATE {s}.measurement SET measurement_datetime = TIMESTAMP '1700-01-01 00:00:00' WHERE measurement_id IN "
        f"(SELECT measurement_id FROM {s}.measurement WHERE person_id >= 20 ORDER BY measurement_id LIMIT 2 OFFSET 3)",
        # two rows loaded twice; a row id another person's record also uses (a collision, kept); two null ids
        f"INSERT INTO {co} SELECT * FROM {co} WHERE condition_occurrence_id IN (SELECT condition_occurrence_id "
        f"FROM {co} WHERE person_id >= 20 ORDER BY condition_occurrence_id LIMIT 2)",
        f"INSERT INTO {co} (condition_occurrence_id, person_id, condition_concept_id, condition_start_date, "
        f"condition_type_concept_id, condition_source_value) SELECT condition_occurrence_id, 31, "
        f"condition_concept_id, condition_start_date, condition_type_concept_id, condition_source_value FROM {co} "
        f"WHERE condition_occurrence_id = {_first(s, 'condition_occurrence', 'condition_occurrence_id', 30)}",
        f"ALTER TABLE {co} ALTER COLUMN condition_occurrence_id DROP NOT NULL",
        f"INSERT INTO {co} (condition_occurrence_id, person_id, condition_concept_id, condition_start_date, "
        f"condition_type_concept_id, condition_source_value) SELECT NULL, person_id, condition_concept_id, "
        f"condition_start_date, condition_type_concept_id, condition_source_value FROM {co} "
        f"WHERE condition_occurrence_id = {_first(s, 'condition_occurrence', 'condition_occurrence_id', 40)}",
        f"INSERT INTO {co} (condition_occurrence_id, person_id, condition_concept_id, condition_start_date, "
        f"condition_type_concept_id, condition_source_value) SELECT NULL, person_id, condition_concept_id, "
        f"condition_start_date, condition_type_concept_id, condition_source_value FROM {co} "
        f"WHERE condition_occurrence_id = {_first(s, 'condition_occurrence', 'condition_occurrence_id', 40)}",
        # person 20: two observation periods with a 9-year gap between them
        f"INSERT INTO {s}.observation_period (observation_period_id, person_id, observation_period_start_date, "
        f"observation_period_end_date, period_type_concept_id) SELECT observation_period_id + 1000000, person_id, "
        f"observation_period_start_date + 3650, observation_period_end_date, period_type_concept_id "
        f"FROM {s}.observation_period WHERE person_id = 20",
        f"UPDATE {s}.observation_period SET observation_period_end_date = observation_period_start_date + 365 "
        f"WHERE person_id = 20 AND observation_period_id < 1000000",
        # text where the DDL says integer or date
        f"ALTER TABLE {co} ALTER COLUMN person_id TYPE VARCHAR(20)",
        f"UPDATE {co} SET person_id = 'abc' WHERE condition_occurrence_id = (SELECT MIN(condition_occurrence_id) "
        f"FROM {co} WHERE person_id = '10')",
        f"ALTER TABLE {s}.drug_exposure ALTER COLUMN drug_concept_id TYPE VARCHAR(20)",
        f"UPDATE {s}.drug_exposure SET drug_concept_id = 'x12' "
        f"WHERE drug_exposure_id = {_first(s, 'drug_exposure', 'drug_exposure_id', 11)}",
        f"ALTER TABLE {s}.procedure_occurrence ALTER COLUMN procedure_date TYPE VARCHAR(20)",
        f"UPDATE {s}.procedure_occurrence SET procedure_date = '2021-13-45' "
        f"WHERE procedure_occurrence_id = {_first(s, 'procedure_occurrence', 'procedure_occurrence_id', 12)}",
        # a lab value held as text: a comparator, a word and a decimal comma (the events stay, without the value)
        f"ALTER TABLE {s}.measurement ALTER COLUMN value_as_number TYPE VARCHAR(20)",
        f"UPDATE {s}.measurement SET value_as_number = CASE measurement_id % 3 WHEN 0 THEN '>5' WHEN 1 THEN "
        f"'positive' ELSE '7,5' END WHERE measurement_id IN (SELECT measurement_id FROM {s}.measurement "
        f"WHERE person_id = 21 AND value_as_number IS NOT NULL ORDER BY measurement_id LIMIT 4)",
    ]
