"""Embedding tables out: DuckDB, PostgreSQL, Parquet, the OHDSI cohort-attribute form; idempotent, transactional."""
from __future__ import annotations

import datetime as dt
import json

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from omop_behrt.db.database import Database, Transaction
from omop_behrt.vectors.export import EmbeddingModelInfo, write_embeddings


def _index(n: int, cid: int = 3) -> pa.Table:
    return pa.table({"cohort_definition_id": pa.array([cid] * n, pa.int64()),
                     "subject_id": pa.array(np.arange(1, n + 1), pa.int64()),
                     "index_date": pa.array([dt.datetime(2010, 1, 1) + dt.timedelta(days=i) for i in range(n)],
                                            pa.timestamp("us"))})


MODEL = EmbeddingModelInfo(model_id="m1", name="behrt-test", dims=8, checksum="ab" * 32, config={"hidden": 8})


def _vectors(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, 8)).astype(np.float32)


def test_duckdb_round_trip_and_idempotence(tmp_path):
    db = tmp_path / "out.duckdb"
    v = _vectors(50)
    r = write_embeddings(db, _index(50), v, MODEL, ohdsi_analysis_id=990, provenance={"note": "first"})
    assert (r.rows, r.replaced, r.vector_type, r.ohdsi_rows) == (50, 0, "FLOAT[8]", 400)
    con = duckdb.connect(str(db), read_only=True)
    assert con.execute("SELECT data_type FROM information_schema.columns WHERE table_name = 'patient_embedding' "
                       "AND column_name = 'embedding'").fetchall()[0][0] == "FLOAT[8]"
    got = np.array([row[0] for row in con.execute(
        "SELECT embedding FROM results.patient_embedding ORDER BY subject_id").fetchall()], dtype=np.float32)
    assert np.array_equal(got, v)
    con.close()
    # a re-run replaces: same row counts, new values, one registry row, two provenance rows
    v2 = _vectors(50, seed=1)
    r2 = write_embeddings(db, _index(50), v2, MODEL, ohdsi_analysis_id=990)
    assert r2.replaced == 50
    con = duckdb.connect(str(db), read_only=True)
    assert con.execute("SELECT COUNT(*) FROM results.patient_embedding").fetchall()[0][0] == 50
    assert con.execute("SELECT COUNT(*) FROM results.embedding_model").fetchall()[0][0] == 1
    assert con.execute("SELECT COUNT(*) FROM results.embedding_run").fetchall()[0][0] == 2
    assert con.execute("SELECT COUNT(*) FROM results.cohort_attribute").fetchall()[0][0] == 400
    first = con.execute("SELECT embedding FROM results.patient_embedding WHERE subject_id = 1").fetchall()[0][0]
    assert np.allclose(first, v2[0])
    prov = json.loads(con.execute("SELECT provenance FROM results.embedding_run ORDER BY created_at").fetchall()[0][0])
    assert prov["note"] == "first" and prov["model_id"] == "m1" and prov["cohort_definition_id"] == 3
    con.close()
    # another cohort sits beside it
    write_embeddings(db, _index(10, cid=4), _vectors(10), MODEL)
    con = duckdb.connect(str(db), read_only=True)
    assert con.execute("SELECT cohort_definition_id, COUNT(*) FROM results.patient_embedding GROUP BY 1 ORDER BY 1"
                       ).fetchall() == [(3, 50), (4, 10)]


def test_ohdsi_cohort_attribute_shape(tmp_path):
    db = tmp_path / "o.duckdb"
    v = _vectors(5)
    write_embeddings(db, _index(5), v, MODEL, ohdsi_analysis_id=991)
    con = duckdb.connect(str(db), read_only=True)
    cols = [r[0] for r in con.execute("DESCRIBE results.cohort_attribute").fetchall()]
    assert cols == ["cohort_definition_id", "subject_id", "cohort_start_date", "attribute_definition_id",
                    "value_as_number"]
    assert [r[0] for r in con.execute("DESCRIBE results.attribute_definition").fetchall()] == [
        "attribute_definition_id", "attribute_name", "attribute_description", "attribute_type_concept_id",
        "attribute_syntax"]
    ids = [r[0] for r in con.execute("SELECT attribute_definition_id FROM results.attribute_definition ORDER BY 1"
                                     ).fetchall()]
    assert ids == [k * 1000 + 991 for k in range(8)]
    # value of dimension k for subject s equals the vector
    val = con.execute("SELECT value_as_number FROM results.cohort_attribute WHERE subject_id = 3 AND "
                      "attribute_definition_id = 5991").fetchall()[0][0]
    assert val == pytest.approx(float(v[2, 5]), rel=1e-6)
    date = con.execute("SELECT DISTINCT cohort_start_date FROM results.cohort_attribute WHERE subject_id = 3"
                       ).fetchall()
    assert date == [(dt.date(2010, 1, 3),)]
    with pytest.raises(ValueError, match="analysis id must be in 990..999"):
        write_embeddings(db, _index(5), v, MODEL, ohdsi_analysis_id=42)


def test_failure_mid_write_leaves_old_rows(tmp_path, monkeypatch):
    db = tmp_path / "f.duckdb"
    v = _vectors(20)
    write_embeddings(db, _index(20), v, MODEL)
    real = Transaction.insert_arrow
    calls = {"n": 0}

    def failing(self, table_name, table):
        calls["n"] += 1
        real(self, table_name, table.slice(0, table.num_rows // 2))   # half the rows land ...
        raise RuntimeError("disk full (injected)")                      # ... then the write dies

    monkeypatch.setattr(Transaction, "insert_arrow", failing)
    with pytest.raises(RuntimeError, match="injected"):
        write_embeddings(db, _index(20), _vectors(20, seed=9), MODEL)
    assert calls["n"] == 1
    monkeypatch.undo()
    con = duckdb.connect(str(db), read_only=True)
    rows = con.execute("SELECT embedding FROM results.patient_embedding ORDER BY subject_id").fetchall()
    assert len(rows) == 20 and np.allclose(np.array([r[0] for r in rows]), v)
    assert con.execute("SELECT COUNT(*) FROM results.embedding_model").fetchall()[0][0] == 1


def test_refuses_cdm_schema(eunomia_db, tmp_path):
    import shutil
    db = tmp_path / "cdm.duckdb"
    shutil.copy(eunomia_db, db)
    with pytest.raises(ValueError, match="holds a CDM.*--allow-cdm-schema"):
        write_embeddings(db, _index(3), _vectors(3), MODEL, schema="main")
    r = write_embeddings(db, _index(3), _vectors(3), MODEL, schema="main", allow_cdm_schema=True)
    assert r.rows == 3
    r = write_embeddings(db, _index(3), _vectors(3), MODEL)   # default: the results schema
    assert "results.patient_embedding" in r.target


def test_parquet_round_trip(tmp_path):
    v = _vectors(30)
    r = write_embeddings(tmp_path / "emb", _index(30), v, MODEL, ohdsi_analysis_id=990)
    t = pq.read_table(tmp_path / "emb" / "patient_embedding.parquet")
    assert t.schema.field("embedding").type == pa.list_(pa.float32(), 8)
    assert np.array_equal(np.stack(t["embedding"].to_numpy(zero_copy_only=False)), v)
    assert t["index_date"].type == pa.date32()
    write_embeddings(tmp_path / "emb", _index(30), _vectors(30, 2), MODEL, ohdsi_analysis_id=990)
    t = pq.read_table(tmp_path / "emb" / "patient_embedding.parquet")
    assert t.num_rows == 30 and r.rows == 30
    assert pq.read_table(tmp_path / "emb" / "embedding_model.parquet").num_rows == 1
    assert pq.read_table(tmp_path / "emb" / "cohort_attribute.parquet").num_rows == 240
    assert len((tmp_path / "emb" / "embedding_run.jsonl").read_text().splitlines()) == 2
    # a single file target keeps its name
    write_embeddings(tmp_path / "one.parquet", _index(2), _vectors(2), MODEL)
    assert pq.read_table(tmp_path / "one.parquet").num_rows == 2


def test_bad_vectors(tmp_path):
    with pytest.raises(ValueError, match=r"expected 4 vectors as an \(n, d\) array"):
        write_embeddings(tmp_path / "x", _index(4), _vectors(3), MODEL)
    two = pa.concat_tables([_index(2, 1), _index(2, 2)])
    with pytest.raises(ValueError, match="one cohort per write"):
        write_embeddings(tmp_path / "x", two, _vectors(4), MODEL)


@pytest.mark.postgres
def test_postgres_round_trip(pg_url, pg_schema):
    v = _vectors(40)
    r = write_embeddings(pg_url, _index(40), v, MODEL, schema=pg_schema, ohdsi_analysis_id=990)
    assert r.vector_type in ("REAL[]", "vector(8)") and r.rows == 40
    db = Database.connect(pg_url)
    got = db.query(f'SELECT subject_id, embedding FROM "{pg_schema}".patient_embedding ORDER BY subject_id')
    assert np.allclose(np.array(got["embedding"].to_pylist(), dtype=np.float32), v)
    r2 = write_embeddings(pg_url, _index(40), _vectors(40, 5), MODEL, schema=pg_schema, ohdsi_analysis_id=990)
    assert r2.replaced == 40
    assert db.scalar(f'SELECT COUNT(*) FROM "{pg_schema}".patient_embedding') == 40
    assert db.scalar(f'SELECT COUNT(*) FROM "{pg_schema}".cohort_attribute') == 320
    assert db.scalar(f'SELECT COUNT(*) FROM "{pg_schema}".embedding_model') == 1
    db.close()
