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
