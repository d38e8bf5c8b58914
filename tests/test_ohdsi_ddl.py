"""The OHDSI tables we write, against the official CDM DDL (tests/data/omop_cdm_ddl, OHDSI/CommonDataModel).

The repository holds no OHDSI *results* DDL: ``cohort`` is checked against its CDM 5.4 definition and
``attribute_definition`` against CDM 5.3's (5.4 dropped it); ``cohort_attribute`` has no official DDL here (it
left the CDM in 5.3) and its cohort columns are checked against ``cohort``'s. Names, order and NOT NULL must
match; types by family (the DDL's ``integer`` ids we write as BIGINT: wider, and read back the same).
"""
from __future__ import annotations

import datetime as dt
import re
import shutil
from pathlib import Path

import duckdb
import numpy as np
import pyarrow as pa

from omop_behrt.tasks import cohorts
from omop_behrt.vectors.export import EmbeddingModelInfo, write_embeddings

DDL = Path(__file__).parent / "data" / "omop_cdm_ddl"
FAMILY = {"integer": "int", "bigint": "int", "date": "date", "varchar": "text", "text": "text", "float": "float",
          "double": "float", "numeric": "float"}
MODEL = EmbeddingModelInfo(model_id="m1", name="behrt-test", dims=4, checksum="ab" * 32, config={"hidden": 4})


def official(version: str, table: str) -> list[tuple[str, str, bool]]:
    """(column, type family, NOT NULL) of ``table`` in the official PostgreSQL DDL of CDM ``version``."""
    text = (DDL / version / f"OMOPCDM_postgresql_{version}_ddl.sql").read_text()
    m = re.search(rf"CREATE TABLE @cdmDatabaseSchema\.{table} \((.*?)\);", text, re.S)
    assert m, f"{table} not in the CDM {version} DDL"
    out = []
    for line in m.group(1).strip().split(",\n"):
        name, typ, *rest = line.split()
        out.append((name, FAMILY[re.sub(r"\(.*", "", typ).lower()], " ".join(rest).upper() == "NOT NULL"))
    return out


def ours(db: Path, table: str) -> list[tuple[str, str, bool]]:
    """The same for a table as DuckDB holds it."""
    con = duckdb.connect(str(db), read_only=True)
    rows = con.execute(f"DESCRIBE results.{table}").fetchall()
    con.close()
    return [(r[0], FAMILY[re.sub(r"\(.*", "", r[1]).lower()], r[2] == "NO") for r in rows]


def _index(n: int) -> pa.Table:
    return pa.table({"cohort_definition_id": pa.array([3] * n, pa.int64()),
                     "subject_id": pa.array(np.arange(1, n + 1), pa.int64()),
                     "index_date": pa.array([dt.datetime(2010, 1, 1)] * n, pa.timestamp("us"))})


def test_cohort_table_is_the_cdm_one(eunomia_db, tmp_path):
    db = tmp_path / "c.duckdb"
    shutil.copy(eunomia_db, db)
    cohorts.first_occurrence_cohort(db, 1, [192671], results_schema="results")
    assert official("5.4", "cohort") == [("cohort_definition_id", "int", True), ("subject_id", "int", True),
                                         ("cohort_start_date", "date", True), ("cohort_end_date", "date", True)]
    assert ours(db, "cohort") == official("5.4", "cohort")


def test_cohorts_write_into_the_official_cohort_table(eunomia_db, tmp_path):
    """A results schema made with the official DDL (integer ids) is used as it is, with the same rows."""
    db = tmp_path / "c.duckdb"
    shutil.copy(eunomia_db, db)
    text = (DDL / "5.4" / "OMOPCDM_postgresql_5.4_ddl.sql").read_text()
    create = re.search(r"CREATE TABLE @cdmDatabaseSchema\.cohort \(.*?\);", text, re.S).group(0)
    con = duckdb.connect(str(db))
    con.execute("CREATE SCHEMA results")
    con.execute(create.replace("@cdmDatabaseSchema", "results"))
    expected = con.execute("""SELECT person_id, min(condition_start_date) FROM condition_occurrence
                              WHERE condition_concept_id = 192671 GROUP BY 1 ORDER BY 1""").fetchall()
    con.close()
    cohorts.first_occurrence_cohort(db, 1, [192671], results_schema="results", descendants=False)
    con = duckdb.connect(str(db), read_only=True)
    assert con.execute("SELECT data_type FROM information_schema.columns WHERE table_schema = 'results' "
                       "AND table_name = 'cohort' AND column_name = 'subject_id'").fetchall() == [("INTEGER",)]
    got = con.execute("SELECT subject_id, cohort_start_date FROM results.cohort WHERE cohort_definition_id = 1 "
                      "ORDER BY 1").fetchall()
    assert got == expected and len(got) == 479


def test_attribute_tables_follow_the_cdm_53_ddl(tmp_path):
    db = tmp_path / "o.duckdb"
    write_embeddings(db, _index(5), np.zeros((5, 4), np.float32), MODEL, ohdsi_analysis_id=991)
    # attribute_definition: the official table, same columns, types and NOT NULL
    assert ours(db, "attribute_definition") == official("5.3", "attribute_definition")
    assert [c[0] for c in official("5.3", "attribute_definition")] == [
        "attribute_definition_id", "attribute_name", "attribute_description", "attribute_type_concept_id",
        "attribute_syntax"]
    # cohort_attribute: the cohort key as in the official cohort table, then the attribute and its value
    attr = ours(db, "cohort_attribute")
    assert attr[:3] == official("5.4", "cohort")[:3]
    assert attr[3:] == [("attribute_definition_id", "int", True), ("value_as_number", "float", True)]


def test_export_into_the_official_attribute_definition_table(tmp_path):
    """The official table (attribute_type_concept_id NOT NULL) takes our rows: type concept 0, a description."""
    db = tmp_path / "o.duckdb"
    text = (DDL / "5.3" / "OMOPCDM_postgresql_5.3_ddl.sql").read_text()
    create = re.search(r"CREATE TABLE @cdmDatabaseSchema\.attribute_definition \(.*?\);", text, re.S).group(0)
    con = duckdb.connect(str(db))
    con.execute("CREATE SCHEMA results")
    con.execute(create.replace("@cdmDatabaseSchema", "results").replace(" TEXT ", " VARCHAR "))
    con.close()
    write_embeddings(db, _index(5), np.zeros((5, 4), np.float32), MODEL, ohdsi_analysis_id=991)
    con = duckdb.connect(str(db), read_only=True)
    assert con.execute("SELECT COUNT(*) FROM results.attribute_definition").fetchall() == [(4,)]
    assert con.execute("SELECT attribute_definition_id, attribute_type_concept_id, attribute_syntax IS NULL, "
                       "attribute_description LIKE '%behrt-test%' FROM results.attribute_definition ORDER BY 1"
                       ).fetchall() == [(k * 1000 + 991, 0, True, True) for k in range(4)]


def test_export_into_an_attribute_definition_of_an_earlier_version(tmp_path):
    """A two-column attribute_definition (written before the CDM 5.3 columns) is kept and still written."""
    db = tmp_path / "o.duckdb"
    con = duckdb.connect(str(db))
    con.execute("CREATE SCHEMA results")
    con.execute("CREATE TABLE results.attribute_definition (attribute_definition_id BIGINT NOT NULL, "
                "attribute_name VARCHAR NOT NULL)")
    con.close()
    write_embeddings(db, _index(3), np.zeros((3, 4), np.float32), MODEL, ohdsi_analysis_id=997)
    con = duckdb.connect(str(db), read_only=True)
    assert con.execute("SELECT attribute_definition_id FROM results.attribute_definition ORDER BY 1").fetchall() \
        == [(k * 1000 + 997,) for k in range(4)]


def test_parquet_attribute_definition_of_an_earlier_version(tmp_path):
    """A Parquet attribute_definition with two columns gets the new ones: type concept 0, nulls."""
    import pyarrow.parquet as pq
    out = tmp_path / "vectors"
    out.mkdir()
    pq.write_table(pa.table({"attribute_definition_id": pa.array([5], pa.int64()), "attribute_name": ["old"]}),
                   out / "attribute_definition.parquet")
    write_embeddings(out, _index(3), np.zeros((3, 4), np.float32), MODEL, ohdsi_analysis_id=997)
    got = pq.read_table(out / "attribute_definition.parquet").sort_by("attribute_definition_id")
    assert got["attribute_definition_id"].to_pylist() == [5, 997, 1997, 2997, 3997]
    assert got["attribute_type_concept_id"].to_pylist() == [0] * 5
    assert got["attribute_description"].to_pylist()[0] is None
